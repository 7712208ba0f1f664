#!/usr/bin/env bash
# Packs kvroute and test_cuda_ops, built HERE (nvcc emits sm_80 and sm_90 code without a GPU),
# with the shared libraries they load that a bare CUDA machine lacks (oneDNN, yaml-cpp, HDF5,
# OpenMPI, sentencepiece, ...), into one archive for scripts/gpu_check.sh on a GPU machine that
# has the NVIDIA driver and the CUDA toolkit but not kvroute's build dependencies (the lent
# H200 image has nvcc, cmake and ninja, no Debian -dev packages, and fetches nothing):
#
#   here:  scripts/gpu_bundle.sh                  # writes build-cuda/gpu-bundle.tar.xz (~20 MiB)
#   there: KVROUTE_PREBUILT=build-cuda/gpu-bundle.tar.xz scripts/gpu_check.sh
#
# Left out, so the GPU machine's own are used: the C library family, libstdc++ and libgcc_s
# (a newer one there still serves this build), the CUDA toolkit's libraries, the driver's, and
# NCCL (over 200 MiB; gpu_check.sh looks for the pip wheel's libnccl.so.2 there).
# Environment: KVROUTE_BUILD_DIR (default build-cuda), JOBS (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD="${KVROUTE_BUILD_DIR:-build-cuda}"
JOBS="${JOBS:-$(nproc)}"
ARCHIVE="${1:-$BUILD/gpu-bundle.tar.xz}"

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  if [ "$BUILD" = "build-cuda" ]; then
    cmake --preset cuda
  else
    cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVROUTE_CUDA=ON
  fi
fi
grep -q "^KVROUTE_CUDA:STRING=ON" "$BUILD/CMakeCache.txt" ||
  { echo "gpu_bundle: $BUILD is not configured with KVROUTE_CUDA=ON" >&2; exit 1; }
nice -n 10 cmake --build "$BUILD" -j "$JOBS" --target kvroute test_cuda_ops

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
cp "$BUILD/kvroute" "$BUILD/tests/test_cuda_ops" "$stage/bin/"
skip='^(ld-linux.*|lib(c|m|dl|pthread|rt|resolv|util|stdc\+\+|gcc_s|cuda|cudart|cublas|cublasLt|nccl|nvidia-.*)\.so.*)$'
ldd "$stage/bin/kvroute" "$stage/bin/test_cuda_ops" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
  while read -r lib; do
    case "$lib" in /usr/local/cuda*) continue ;; esac
    basename "$lib" | grep -qE "$skip" || cp -L "$lib" "$stage/lib/"
  done
if ldd "$stage/bin/kvroute" "$stage/bin/test_cuda_ops" | grep -q "not found"; then
  echo "gpu_bundle: a library of the binaries is not found here:" >&2
  ldd "$stage/bin/kvroute" "$stage/bin/test_cuda_ops" | grep "not found" >&2
  exit 1
fi
mkdir -p "$(dirname "$ARCHIVE")"
tar -cJf "$ARCHIVE" -C "$stage" bin lib
echo "gpu_bundle: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1); $(ls "$stage/lib" | wc -l) libraries)"
echo "On the GPU machine (carry $ARCHIVE): KVROUTE_PREBUILT=$ARCHIVE scripts/gpu_check.sh"
