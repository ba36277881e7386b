#!/usr/bin/env bash
# Newcomer command 1: install dependencies, build, and serve the bundled tiny GLM-4 model over
# gRPC on port ${PORT:-50051} (Ctrl-C drains and stops it).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo_root/scripts/install-deps.sh"
"$repo_root/scripts/build.sh" glmserve
exec "${GLMSERVE_BUILD_DIR:-$repo_root/build}/glmserve" serve --model "$repo_root/models/glm4-tiny" \
  --host 127.0.0.1 --port "${PORT:-50051}" "$@"
