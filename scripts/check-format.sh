#!/usr/bin/env bash
# Checks (default) or applies (--fix) .clang-format on every tracked C++/CUDA source, with Debian
# 12's clang-format 14. The check is a test (format_check): CI fails on unformatted code.
#   scripts/check-format.sh          # lists files that differ, exit 1 if any
#   scripts/check-format.sh --fix    # rewrites them
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
formatter="${CLANG_FORMAT:-clang-format}"
command -v "$formatter" >/dev/null || { echo "check-format: $formatter not found (apt-get install clang-format)"; exit 1; }
mapfile -t files < <(git ls-files '*.cc' '*.h' '*.cu' '*.cuh' ':!:third_party/**')
if [ "${1:-}" = "--fix" ]; then
  "$formatter" -i --style=file "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  "$formatter" --style=file --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ "${#bad[@]}" -gt 0 ]; then
  echo "check-format: ${#bad[@]} file(s) differ from .clang-format (scripts/check-format.sh --fix):"
  printf '  %s\n' "${bad[@]}"
  exit 1
fi
echo "check-format: ${#files[@]} files formatted"
