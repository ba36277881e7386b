#!/usr/bin/env bash
# Build stage helper: copies glmserve, the health probe and every shared library they load into
# DEST (bin/, lib/), so the runtime stage needs only `COPY --from=build`. glibc and the C++
# runtime stay the runtime base's own (Debian 12 builds need glibc >= 2.36: Ubuntu 24.04 and
# Debian 12 bases qualify).  Usage: collect-runtime.sh DEST BINARY... [-- EXTRA_LIB_DIR...]
# EXTRA_LIB_DIRs are copied whole (libraries opened with dlopen, e.g. cuDNN's engines, that ldd
# cannot see).
set -euo pipefail
dest="$1"; shift
bins=(); extra=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
  bins+=("$1"); shift
done
mkdir -p "$dest/bin" "$dest/lib"
for b in "${bins[@]}"; do install -m 0755 "$b" "$dest/bin/"; done
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libutil|libresolv|libstdc\+\+|libgcc_s)\.so'
for b in "${bins[@]}"; do
  # (Not `ldd | grep -q`: under pipefail grep -q's early exit fails the pipeline and hid every miss.)
  deps="$(ldd "$b")"
  if grep 'not found' <<<"$deps" >&2; then echo "collect-runtime: $b: libraries not found (above)" >&2; exit 1; fi
  awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' <<<"$deps" | while read -r name path; do
    if ! [[ "$name" =~ $skip ]]; then cp -Ln "$path" "$dest/lib/$name"; fi
  done
done
for d in "${extra[@]}"; do
  find "$d" -maxdepth 1 -name '*.so*' \( -type f -o -type l \) -exec cp -Ln {} "$dest/lib/" \;
done
