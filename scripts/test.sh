#!/usr/bin/env bash
# Newcomer command 2 (and CI): install dependencies (with transformers for the live reference
# check), build everything, run every test.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GLMSERVE_PY_REFERENCE="${GLMSERVE_PY_REFERENCE:-1}" "$repo_root/scripts/install-deps.sh"
"$repo_root/scripts/build.sh"
ctest --test-dir "${GLMSERVE_BUILD_DIR:-$repo_root/build}" --output-on-failure -j "${GLMSERVE_TEST_JOBS:-2}" \
  --timeout 600 "$@"
