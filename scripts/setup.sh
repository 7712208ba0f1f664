#!/usr/bin/env bash
# Installs every Debian package kvroute needs (idempotent), then configures and
# builds. Usage: scripts/setup.sh [preset]   (presets: default, cpu, cuda, asan;
# default builds the CUDA backend too when nvcc is found)
set -euo pipefail
cd "$(dirname "$0")/.."

# ocl-icd-opencl-dev: Debian's oneDNN CMake config calls find_package(OpenCL REQUIRED), but the
# package is only a Recommends of libdnnl-dev, which --no-install-recommends skips.
PACKAGES=(build-essential cmake ninja-build pkg-config
  libyaml-cpp-dev libcli11-dev libhdf5-dev libopenmpi-dev openmpi-bin libdnnl-dev
  libgtest-dev libgmock-dev libsentencepiece-dev bible-kjv gnuplot-nox
  ocl-icd-opencl-dev nlohmann-json3-dev libpcre2-dev libutf8proc-dev libzstd-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PRESET="${1:-${KVROUTE_PRESET:-default}}"
# A CUDA build fetches cudnn-frontend's headers with pip and unzips them
# (scripts/fetch_cudnn_frontend.sh): Debian's python3-pip and unzip.
if [ "$PRESET" = cuda ] || { [ "$PRESET" = default ] && { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }; }; then
  cuda_missing=()
  for p in python3-pip unzip; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || cuda_missing+=("$p")
  done
  if [ ${#cuda_missing[@]} -gt 0 ]; then
    echo "setup: installing ${cuda_missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${cuda_missing[@]}" ||
      echo "setup: could not install ${cuda_missing[*]}; the CUDA build goes on without cuDNN attention" >&2
  fi
fi
# A CUDA build also wants cudnn-frontend's headers for cuDNN attention; without them (no pip, no
# network) it goes on with kvroute's own attention kernels, and CMake says so.
case "$PRESET" in
  cuda) scripts/fetch_cudnn_frontend.sh || true ;;
  default) if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then scripts/fetch_cudnn_frontend.sh || true; fi ;;
esac
cmake --preset "$PRESET" >/dev/null
# KVROUTE_TARGETS limits the build (the quickstart needs only the kvroute binary).
cmake --build --preset "$PRESET" -j "$(nproc)" ${KVROUTE_TARGETS:+--target $KVROUTE_TARGETS}
