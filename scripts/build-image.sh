#!/usr/bin/env bash
# Builds deploy/docker/Dockerfile.cpu for real with Debian 12's podman (buildah inside), then runs
# the image on models/glm4-tiny and checks it: the image's own HEALTHCHECK (`podman healthcheck
# run`, i.e. glmserve-health-probe inside the container), the probe failing on an unknown
# service, /metrics, and one Infer plus GetModelInfo from the host through scripts/glmserve-client.py.
#
#   scripts/build-image.sh                  build from the committed tree (git archive HEAD), then test
#   scripts/build-image.sh --worktree       build from the working tree (.dockerignore applies)
#   scripts/build-image.sh --test-only      test an image built before
#   scripts/build-image.sh --tag T --workdir DIR
#
# Network: only Debian's package servers and PyPI are needed (the Dockerfile's own install-deps.sh
# fetches LibTorch from PyPI's torch wheel, and grpcio and the test tools; the CUDA runtime
# libraries LibTorch links come from NVIDIA's PyPI wheels). When no container registry is reachable, the base
# images debian:12 and debian:12-slim are made locally: `debootstrap --variant=minbase bookworm`
# from deb.debian.org, imported with `podman import` and tagged as those names (local storage only;
# a real registry image of those names is used when already present or pullable).
# Everything large stays outside the checkout: WORKDIR (default /tmp/glmserve-image) and podman's
# storage. Needs root (apt-get install podman buildah runc debootstrap: done here when missing).
# The build runs at nice ${GLMSERVE_IMAGE_NICE:-10} (a shared machine).
#
# Exit: 0 built and checked; 1 a build or check failed; 2 this machine cannot build or run
# containers (the reason is printed; e.g. no cgroups / rlimits the OCI runtime needs).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="glmserve:cpu"
workdir="${GLMSERVE_IMAGE_WORKDIR:-/tmp/glmserve-image}"
mode=head
do_build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --worktree) mode=worktree; shift ;;
    --test-only) do_build=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$workdir"
log="$workdir/build.log"
say() { echo "build-image: $*"; }
cannot() { echo "build-image: CANNOT RUN CONTAINERS HERE: $*" >&2; exit 2; }
fail() { echo "build-image: FAILED: $*" >&2; exit 1; }

# --- tools ---------------------------------------------------------------------------------------
sudo_cmd=""
if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
need=()
for t in podman:podman buildah:buildah runc:runc debootstrap:debootstrap; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  say "apt-get install ${need[*]}"
  { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
      --no-install-recommends "${need[@]}"; } >"$workdir/apt.log" 2>&1 || fail "apt-get install ${need[*]} ($workdir/apt.log)"
fi

# OCI runtime and limits. Debian 12's default crun refuses hybrid cgroup v1/v2 hosts ("cgroups in
# hybrid mode not supported"), runc does not; and podman asks for nofile/nproc limits above the
# caller's, which fails without CAP_SYS_RESOURCE ("setrlimit RLIMIT_NPROC: Operation not
# permitted"), so the container gets the caller's own limits (nproc capped at 4096).
runtime="${GLMSERVE_OCI_RUNTIME:-runc}"
nofile="$(ulimit -Hn)"; [ "$nofile" = unlimited ] && nofile=1048576
nproc="$(ulimit -Hu)"; { [ "$nproc" = unlimited ] || [ "$nproc" -gt 4096 ]; } && nproc=4096
podman=(podman --runtime "$runtime")
ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

# --- base images ---------------------------------------------------------------------------------
have_image() { podman image exists "$1" 2>/dev/null; }
if [ "$do_build" = 1 ]; then
  for img in debian:12 debian:12-slim; do
    full="docker.io/library/$img"
    have_image "$full" && continue
    if timeout 60 podman pull -q "$full" >>"$log" 2>&1; then say "pulled $full"; continue; fi
    rootfs="$workdir/rootfs-bookworm"
    if [ ! -f "$rootfs/.complete" ]; then
      say "no registry reachable: debootstrap --variant=minbase bookworm (deb.debian.org)"
      rm -rf "$rootfs"
      debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$workdir/debootstrap.log" 2>&1 \
        || fail "debootstrap ($workdir/debootstrap.log)"
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      touch "$rootfs/.complete"
    fi
    tar --numeric-owner --exclude=./.complete -C "$rootfs" -c . \
      | podman import -q --change 'CMD ["/bin/bash"]' - "$full" >>"$log" 2>&1 || fail "podman import $full"
    say "made $full from debootstrap (minbase bookworm)"
  done
fi

# Can this machine run a container at all? Say exactly why not.
if [ "$do_build" = 1 ]; then probe_img=docker.io/library/debian:12-slim; else probe_img="$tag"; fi
if ! err="$("${podman[@]}" run --rm "${ulimits[@]}" --network host --entrypoint /bin/true "$probe_img" 2>&1)"; then
  cannot "podman --runtime $runtime run $probe_img: $err"
fi

# --- build ---------------------------------------------------------------------------------------
if [ "$do_build" = 1 ]; then
  if [ "$mode" = head ]; then
    context="$workdir/context"
    rm -rf "$context"; mkdir -p "$context"
    git -C "$repo_root" archive HEAD | tar -x -C "$context"
    say "context: git archive HEAD ($(git -C "$repo_root" rev-parse --short HEAD))"
  else
    context="$repo_root"
    say "context: working tree $repo_root (.dockerignore applies)"
  fi
  # PyPI (LibTorch's torch wheel, grpcio, NVIDIA's cudart wheel) is reached through whatever CA the
  # host's pip trusts (PIP_CERT or pip's config: e.g. a TLS-inspecting proxy): that bundle and a
  # pip.conf naming it are mounted for the RUN steps only, never stored in a layer.
  mounts=()
  cert="${PIP_CERT:-}"
  [ -n "$cert" ] || cert="$(python3 -m pip config list 2>/dev/null | sed -n "s/^[a-z:.]*cert='\(.*\)'$/\1/p" | head -n 1)"
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    cp "$cert" "$workdir/pip-ca.crt"
    printf '[global]\ncert = /etc/pip-ca.crt\n' >"$workdir/pip.conf"
    mounts=(-v "$workdir/pip-ca.crt:/etc/pip-ca.crt:ro" -v "$workdir/pip.conf:/etc/pip.conf:ro")
    say "pip inside the build trusts the host's pip CA bundle ($cert)"
  fi
  say "podman build -f deploy/docker/Dockerfile.cpu -t $tag (log: $log)"
  start=$(date +%s)
  # --format docker: OCI images drop HEALTHCHECK. --network host: the default bridge needs nothing
  # here, but host networking also works where CNI/iptables do not.
  if ! nice -n "${GLMSERVE_IMAGE_NICE:-10}" "${podman[@]}" build --pull=never --format docker --network host "${ulimits[@]}" "${mounts[@]}" \
      -f "$context/deploy/docker/Dockerfile.cpu" -t "$tag" "$context" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "podman build (full log: $log)"
  fi
  secs=$(( $(date +%s) - start ))
  say "built $tag in $((secs / 60)) min $((secs % 60)) s"
  echo "$secs" >"$workdir/build-seconds"
fi
have_image "$tag" || fail "no image $tag (build it first)"
size=$(podman image inspect --format '{{.Size}}' "$tag")
say "image $tag: $((size / 1000000)) MB ($size bytes)"

# --- run and check -------------------------------------------------------------------------------
model_dir="$repo_root/models/glm4-tiny"
[ -f "$model_dir/config.json" ] || fail "no model at $model_dir"
read -r gport mport < <(python3 - <<'EOF'
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
EOF
)
name="glmserve-image-check-$$"
cleanup() { podman rm -f -t 5 "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# The image's defaults except the model path: the same ports as the HEALTHCHECK, published on loopback.
# (podman logs that it cannot start the periodic health timer without systemd: the check below runs
# the same HEALTHCHECK by hand.) Read-only root and a /tmp tmpfs, like the pod.
"${podman[@]}" run -d --name "$name" "${ulimits[@]}" --read-only --tmpfs /tmp \
  -v "$model_dir:/models/glm4-tiny:ro" -p "127.0.0.1:$gport:50051" -p "127.0.0.1:$mport:9464" \
  "$tag" --model /models/glm4-tiny --host 0.0.0.0 --port 50051 --metrics-port 9464 --device cpu >>"$log" 2>&1 \
  || fail "podman run $tag"
healthy=0
for _ in $(seq 1 120); do
  if "${podman[@]}" healthcheck run "$name" >/dev/null 2>&1; then healthy=1; break; fi
  [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || break
  sleep 1
done
if [ "$healthy" != 1 ]; then podman logs "$name" 2>&1 | tail -n 30 >&2; fail "the image's HEALTHCHECK never passed"; fi
say "OK HEALTHCHECK (glmserve-health-probe in the container) healthy"
rc=0; "${podman[@]}" exec "$name" glmserve-health-probe -addr 127.0.0.1:50051 -service no.such.Service \
  -timeout-ms 2000 >/dev/null 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "health probe on an unknown service exited $rc, want 1"
say "OK health probe exits 1 on an unknown service"
python3 - "$mport" <<'EOF' || fail "/metrics from the container"
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
assert "glmserve_queue_depth" in text, text[:300]
EOF
say "OK /metrics has glmserve_queue_depth"
client=(python3 "$repo_root/scripts/glmserve-client.py" --addr "127.0.0.1:$gport")
info="$("${client[@]}" GetModelInfo '{}')" || fail "GetModelInfo"
out="$("${client[@]}" Infer '{"input_ids": [1, 2, 3], "max_new_tokens": 8}')" || fail "Infer"
python3 - "$out" <<'EOF' || fail "Infer reply: $out"
import json, sys
r = json.loads(sys.argv[1])
assert len(r.get("outputIds") or r.get("output_ids") or []) == 8, r
EOF
say "OK GetModelInfo $(echo "$info" | tr -d '\n ' | cut -c1-120)"
say "OK Infer 8 tokens: $(echo "$out" | tr -d '\n ' | cut -c1-160)"
say "all checks passed ($tag, $((size / 1000000)) MB)"
