#!/usr/bin/env bash
# Configures and builds glmserve into build/ (incremental). Extra arguments are ninja targets.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${GLMSERVE_BUILD_DIR:-$repo_root/build}"
if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S "$repo_root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${GLMSERVE_BUILD_TYPE:-RelWithDebInfo}" >/dev/null
fi
cmake --build "$build_dir" -- "$@"
