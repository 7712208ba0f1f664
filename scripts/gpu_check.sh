#!/usr/bin/env bash
# GPU check, on a machine with an NVIDIA GPU: builds the CUDA preset, runs the GPU
# tests (ctest -L gpu), then `kvroute bench train` on the GPT-2-small-sized config at
# GPT-2 124M's shape (vocab 50304, context 1024, 16 x 1024 tokens per step), printing
# tokens/s, MFU and peak device memory for bf16, bf16 without routing (the cost of
# stochastic routing), fp32 and fp32 with train.deterministic=false, then a per-op
# profile of the bf16 step. Every step runs under `timeout`; the whole script is sized for 8
# minutes on an H200.
#
# Exit status: 0 all passed; 1 a build, test or benchmark failed; 2 no NVIDIA GPU here.
# Environment: KVROUTE_BUILD_DIR (default build-cuda, the cuda preset's directory),
#              JOBS (default: nproc),
#              KVROUTE_PREBUILT: an archive from scripts/gpu_bundle.sh (or the folder it unpacks
#              to): no configure or build here, for a GPU machine without kvroute's build
#              dependencies; the tests then run as one test_cuda_ops process, not through ctest
#              (whose files name the build machine's paths). The lent H200 image has nvcc,
#              cmake and ninja but none of oneDNN, yaml-cpp, CLI11, HDF5, OpenMPI, sentencepiece
#              or GTest, so there the configure step fails: bundle here, carry the archive.
set -uo pipefail
[ -n "${KVROUTE_PREBUILT:-}" ] && KVROUTE_PREBUILT=$(realpath -m "$KVROUTE_PREBUILT")  # relative to the caller's folder
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi missing or lists no device); nothing checked." >&2
  exit 2
fi
PREBUILT="${KVROUTE_PREBUILT:-}"
if [ -z "$PREBUILT" ]; then
  for tool in cmake ninja; do
    command -v "$tool" > /dev/null 2>&1 || { echo "gpu_check: '$tool' not found (install it, or run scripts/setup.sh)" >&2; exit 1; }
  done
  if [ ! -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc > /dev/null 2>&1; then
    echo "gpu_check: nvcc not found (expected /usr/local/cuda/bin/nvcc)" >&2
    exit 1
  fi
fi

BUILD="${KVROUTE_BUILD_DIR:-build-cuda}"
JOBS="${JOBS:-$(nproc)}"
TOTAL_S="${GPU_CHECK_SECONDS:-470}"  # the whole script's budget (8 minutes, less a margin)
LOGS="${TMPDIR:-/tmp}/kvroute_gpu_check"
START=$(date +%s)
FAILED=()
stamp() { echo; echo "=== [$(( $(date +%s) - START ))s] $*"; }
# budget CAP: seconds for the next step: CAP, or what is left of TOTAL_S if less; 1 when
# (almost) nothing is left (never 0: `timeout 0` would mean no limit).
budget() {
  local left=$(( TOTAL_S - ($(date +%s) - START) ))
  if [ "$left" -lt 10 ]; then echo 1; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

stamp "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
# The driver must support the toolkit the build uses, or the runtime sees no device at all.
nvidia-smi | grep -o "CUDA Version: [0-9.]*"
{ /usr/local/cuda/bin/nvcc --version 2>/dev/null || nvcc --version 2>/dev/null; } | grep -o "release [0-9.]*"

if [ -n "$PREBUILT" ]; then
  stamp "prebuilt binaries: $PREBUILT"
  if [ -f "$PREBUILT" ]; then
    rm -rf "$LOGS.bundle" && mkdir -p "$LOGS.bundle" && tar -xJf "$PREBUILT" -C "$LOGS.bundle" ||
      { echo "gpu_check: cannot unpack $PREBUILT" >&2; exit 1; }
    PREBUILT="$LOGS.bundle"
  fi
  # Only kvroute and test_cuda_ops see the bundled libraries (this script's own tools keep the system's).
  KV_LD="$PREBUILT/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # NCCL is not part of the CUDA toolkit (nor, on some images, cuBLAS): a CUDA Python image has
  # them as pip wheels (nvidia-nccl-cu13, nvidia-cublas); add the folder of each one missing.
  kv_ldd() { env LD_LIBRARY_PATH="$KV_LD" ldd "$PREBUILT/bin/kvroute" "$PREBUILT/bin/test_cuda_ops" 2>&1; }
  for lib in $(kv_ldd | awk '$3 == "not" {print $1}' | sort -u); do
    found=$(find /usr /opt /root -name "$lib" 2>/dev/null | head -1)
    [ -n "$found" ] && KV_LD="$KV_LD:$(dirname "$found")"
  done
  if kv_ldd | grep "not found"; then
    echo "gpu_check: the prebuilt binaries miss the libraries above (LD_LIBRARY_PATH=$KV_LD)" >&2; exit 1
  fi
  KVROUTE_BIN="$PREBUILT/bin/kvroute"
else
  KV_LD="${LD_LIBRARY_PATH:-}"
  stamp "configure ($BUILD, KVROUTE_CUDA=ON, Release)"
  if [ "$BUILD" = "build-cuda" ]; then
    configure=(cmake --preset cuda)
  else
    configure=(cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVROUTE_CUDA=ON)
  fi
  if ! timeout 90 "${configure[@]}" > "$LOGS.configure.log" 2>&1; then
    tail -30 "$LOGS.configure.log"; echo "gpu_check: configure failed (log: $LOGS.configure.log)" >&2; exit 1
  fi

  stamp "build kvroute and test_cuda_ops (-j$JOBS)"
  if ! timeout "$(budget 270)" cmake --build "$BUILD" -j "$JOBS" --target kvroute test_cuda_ops > "$LOGS.build.log" 2>&1; then
    grep -E "error|Error" "$LOGS.build.log" | head -30; tail -5 "$LOGS.build.log"
    echo "gpu_check: build failed or timed out (log: $LOGS.build.log)" >&2; exit 1
  fi
  KVROUTE_BIN="$BUILD/kvroute"
fi

if [ -n "$PREBUILT" ]; then
  stamp "GPU tests: test_cuda_ops"
  if ! timeout "$(budget 120)" env LD_LIBRARY_PATH="$KV_LD" "$PREBUILT/bin/test_cuda_ops" 2>&1 | tee "$LOGS.gtest.log"; then
    FAILED+=("test_cuda_ops")
  elif grep -q "^\[  SKIPPED \]" "$LOGS.gtest.log"; then
    echo "gpu_check: GPU tests were skipped: the CUDA runtime sees no usable device (driver older than the toolkit?)" >&2
    FAILED+=("test_cuda_ops (tests skipped)")
  fi
else
  stamp "GPU tests: ctest -L gpu"
  # Every GPU test skips (and ctest counts it as passed) when the CUDA runtime sees no usable
  # device, e.g. a driver too old for this toolkit: that is a failure here, not a pass.
  if ! timeout "$(budget 120)" ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 100 --no-tests=error \
      2>&1 | tee "$LOGS.ctest.log"; then
    FAILED+=("ctest -L gpu")
  elif grep -q -e "\*\*\*Skipped" -e "Not Run" "$LOGS.ctest.log"; then
    echo "gpu_check: GPU tests were skipped: the CUDA runtime sees no usable device (driver older than nvcc?)" >&2
    FAILED+=("ctest -L gpu (tests skipped)")
  fi
fi

# GPT-2 124M's shape on the GPT-2-small-sized config (12 layers, d_model 768, 12 heads).
GPT2=(--set train.backend=cuda --set model.vocab_size=50304 --set model.context=1024 --set train.seq_len=1024
      --set train.batch_size=16 --set train.grad_accum=1)
BENCH=(env LD_LIBRARY_PATH="$KV_LD" "$KVROUTE_BIN" bench train configs/gpt2-small.yaml "${GPT2[@]}" --warmup 2)
SUMMARY=()
bench() {  # bench NAME EXTRA_ARGS...
  local name="$1"; shift
  stamp "bench train: $name"
  local out seconds
  seconds=$(budget 60)
  if [ "$seconds" -le 1 ]; then FAILED+=("bench $name (out of time)"); SUMMARY+=("$(printf '%-34s SKIPPED (out of time)' "$name")"); return; fi
  if ! out=$(timeout "$seconds" "${BENCH[@]}" "$@" 2>&1); then
    echo "$out" | tail -20; FAILED+=("bench $name"); SUMMARY+=("$(printf '%-34s FAILED' "$name")"); return
  fi
  echo "$out"
  local tok mfu mflops mem
  tok=$(echo "$out" | awk -F'|' '$2 ~ /^ tokens\/s / {gsub(/ /, "", $3); print $3}')
  mfu=$(echo "$out" | awk -F'|' '$2 ~ /^ MFU / {gsub(/ /, "", $3); print $3}')
  mflops=$(echo "$out" | awk -F'|' '$2 ~ /^ model FLOP\/s / {gsub(/ |G/, "", $3); print $3}')
  mem=$(echo "$out" | awk -F'|' '$2 ~ /^ device memory peak/ {print $3}' | sed 's/^ *//; s/ *$//')
  # llm.c quotes MFU against the datasheet: 989 TFLOP/s bf16 dense (H100/H200 SXM).
  local sheet
  sheet=$(awk -v g="$mflops" 'BEGIN { if (g != "") printf "%.1f%%", 100 * g / 989000; else print "?" }')
  SUMMARY+=("$(printf '%-34s %12s tok/s  MFU %6s (measured peak)  %6s (989 TFLOP/s datasheet)  device memory %s' \
    "$name" "$tok" "$mfu" "$sheet" "$mem")")
}
BF16=(--set train.precision=bf16 --steps 10 --peak-size 8192)
bench "bf16, stochastic routing" "${BF16[@]}"
bench "bf16, routing none" "${BF16[@]}" --set routing.mode=none
bench "fp32, stochastic routing" --set train.precision=fp32 --steps 3 --peak-size 4096
# The atomic dQ path (train.deterministic=false) exists only in the fp32 attention kernels.
bench "fp32, deterministic=false" --set train.precision=fp32 --set train.deterministic=false --steps 3 --peak-size 4096
bench "bf16 --profile (synced per op)" --set train.precision=bf16 --steps 2 --peak-size 0 --profile

stamp "summary (GPT-2 124M shape: 16 x 1024 tokens per step, vocab 50304)"
printf '%s\n' "${SUMMARY[@]}"
echo "MFU (measured peak) = model FLOP/s over a cuBLASLt bf16 8192^3 GEMM timed after each step (fp32 rows: an sgemm)."
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${FAILED[*]}" >&2
  exit 1
fi
echo "gpu_check: all passed in $(( $(date +%s) - START ))s"
