#!/usr/bin/env bash
# Fetches the headers of cudnn-frontend (NVIDIA's header-only C++ graph API over cuDNN; MIT),
# pinned at one version, into build-deps/cudnn-frontend-<version>/include, where CMake looks
# for them (KVROUTE_CUDNN_FRONTEND_DIR). They are not in Debian; PyPI's nvidia-cudnn-frontend
# wheel carries them, so this is the one use of pip: `pip download` of that one wheel, checked
# against a pinned SHA-256, and nothing of Python at build or run time.
# Only CUDA builds want them (scripts/setup.sh calls this when it builds the CUDA backend).
# Idempotent. Exit 0 when the headers are in place, 1 (with the reason on stderr) when they
# could not be fetched: the CUDA build then keeps kvroute's own attention kernels.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.32.0  # works with the toolkit's cuDNN 9.19 and g++ 12
# The wheel is the same whatever machine runs this (only its headers are used): the CPython 3.11
# manylinux x86_64 build, named explicitly so that its hash can be pinned.
WHEEL_SHA256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0
DEST="build-deps/cudnn-frontend-$VERSION"

if [ -s "$DEST/include/cudnn_frontend.h" ]; then
  echo "cudnn-frontend: $DEST (already fetched)"
  exit 0
fi
fail() { echo "cudnn-frontend: $*; the CUDA backend is built without cuDNN attention" >&2; exit 1; }

PIP=()
if python3 -m pip --version >/dev/null 2>&1; then PIP=(python3 -m pip)
elif command -v pip3 >/dev/null; then PIP=(pip3)
else fail "no pip found (Debian: apt-get install python3-pip)"; fi

mkdir -p build-deps
work=$(mktemp -d build-deps/.cudnn-frontend.XXXXXX)
trap 'rm -rf "$work"' EXIT
timeout 180 "${PIP[@]}" download --timeout 20 --retries 2 --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --python-version 3.11 --implementation cp --abi cp311 --disable-pip-version-check --quiet \
  --dest "$work" "nvidia-cudnn-frontend==$VERSION" >&2 || fail "pip download of nvidia-cudnn-frontend==$VERSION failed"
wheel=$(ls "$work"/nvidia_cudnn_frontend-"$VERSION"-*.whl 2>/dev/null | head -1)
[ -n "$wheel" ] || fail "pip download left no wheel"
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet >/dev/null 2>&1 ||
  fail "$(basename "$wheel") does not have the pinned SHA-256 $WHEEL_SHA256"

# The headers and the licences.
command -v unzip >/dev/null || fail "no unzip found (Debian: apt-get install unzip)"
mkdir -p "$work/x"
unzip -q "$wheel" 'include/*' 'nvidia_cudnn_frontend-*.dist-info/licenses/*' -d "$work/x"
[ -s "$work/x/include/cudnn_frontend.h" ] || fail "the wheel holds no include/cudnn_frontend.h"
mkdir -p "$work/out"
mv "$work/x/include" "$work/out/include"
mv "$work"/x/nvidia_cudnn_frontend-*.dist-info/licenses "$work/out/licenses"
rm -rf "$DEST"
mv "$work/out" "$DEST"
echo "cudnn-frontend: $DEST (headers of nvidia-cudnn-frontend $VERSION)"
