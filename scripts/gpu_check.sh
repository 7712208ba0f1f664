#!/usr/bin/env bash
# GPU check, on a machine with an NVIDIA GPU: builds the CUDA preset, runs the GPU
# tests (ctest -L gpu), then `kvroute bench train` on the GPT-2-small-sized config at
# GPT-2 124M's shape (vocab 50304, context 1024, 16 x 1024 tokens per step), printing
# tokens/s, MFU and peak device memory for bf16, bf16 without routing (the cost of
# stochastic routing), fp32 and fp32 with train.deterministic=false, then a per-op
# profile of the bf16 step, and `kvroute bench attention`: the attention kernels alone,
# forward and backward TFLOP/s at sequence length 1024 for head_dim 64 and 128 (bf16). Every
# step runs under `timeout`; the whole script is sized for 8 minutes on an H200. It ends with
# one summary block (scripts/gpu_check_summary.sh): tests passed/failed/skipped, step time,
# tokens/s and MFU of each benchmark row, the cost of routing, the attention TFLOP/s.
#
# Exit status: 0 all passed; 1 a build, test or benchmark failed; 2 no NVIDIA GPU here.
# Environment: KVROUTE_BUILD_DIR (default build-cuda, the cuda preset's directory),
#              JOBS (default: nproc),
#              KVROUTE_NVIDIA_SMI (default nvidia-smi: the command that lists the GPUs),
#              KVROUTE_PREBUILT: an archive from scripts/gpu_bundle.sh (or the folder it unpacks
#              to): no configure or build here, for a GPU machine without kvroute's build
#              dependencies; the tests then run as one test_cuda_ops process, not through ctest
#              (whose files name the build machine's paths). The lent H200 image has nvcc,
#              cmake and ninja but none of oneDNN, yaml-cpp, CLI11, HDF5, OpenMPI, sentencepiece
#              or GTest, so there the configure step fails: bundle here, carry the archive.
set -uo pipefail
[ -n "${KVROUTE_PREBUILT:-}" ] && KVROUTE_PREBUILT=$(realpath -m "$KVROUTE_PREBUILT")  # relative to the caller's folder
cd "$(dirname "$0")/.."

SMI="${KVROUTE_NVIDIA_SMI:-nvidia-smi}"
if ! command -v "$SMI" > /dev/null 2>&1 || ! "$SMI" -L > /dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine ($SMI missing or lists no device); nothing checked." >&2
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
RUN="$LOGS.run"  # what the summary is made from (scripts/gpu_check_summary.sh lists the files)
rm -rf "$RUN" && mkdir -p "$RUN" || { echo "gpu_check: cannot create $RUN" >&2; exit 1; }
START=$(date +%s)
FAILED=()
stamp() { echo; echo "=== [$(( $(date +%s) - START ))s] $*"; }
# finish STATUS: the summary block, last, then exit (1 if anything failed, else STATUS).
finish() {
  printf '%s\n' "${FAILED[@]}" | sed '/^$/d' > "$RUN/failed.txt"
  echo "$(( $(date +%s) - START ))" > "$RUN/elapsed"
  stamp "summary"
  bash scripts/gpu_check_summary.sh "$RUN"
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check: FAILED (the result line above; logs under $LOGS.*)" >&2
    exit 1
  fi
  exit "$1"
}
# budget CAP: seconds for the next step: CAP, or what is left of TOTAL_S if less; 1 when
# (almost) nothing is left (never 0: `timeout 0` would mean no limit).
budget() {
  local left=$(( TOTAL_S - ($(date +%s) - START) ))
  if [ "$left" -lt 10 ]; then echo 1; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

stamp "GPU"
"$SMI" --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | tee "$RUN/gpu.txt"
# The driver must support the toolkit the build uses, or the runtime sees no device at all.
"$SMI" | grep -o "CUDA Version: [0-9.]*"
{ /usr/local/cuda/bin/nvcc --version 2>/dev/null || nvcc --version 2>/dev/null; } | grep -o "release [0-9.]*"

if [ -n "$PREBUILT" ]; then
  stamp "prebuilt binaries: $PREBUILT"
  if [ -f "$PREBUILT" ]; then
    rm -rf "$LOGS.bundle" && mkdir -p "$LOGS.bundle" && tar -xJf "$PREBUILT" -C "$LOGS.bundle" ||
      { echo "gpu_check: cannot unpack $PREBUILT" >&2; FAILED+=("unpack $PREBUILT"); finish 1; }
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
    echo "gpu_check: the prebuilt binaries miss the libraries above (LD_LIBRARY_PATH=$KV_LD)" >&2
    FAILED+=("prebuilt binaries: libraries not found"); finish 1
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
    tail -30 "$LOGS.configure.log"; echo "gpu_check: configure failed (log: $LOGS.configure.log)" >&2
    FAILED+=("configure"); finish 1
  fi

  stamp "build kvroute and test_cuda_ops (-j$JOBS)"
  if ! timeout "$(budget 270)" cmake --build "$BUILD" -j "$JOBS" --target kvroute test_cuda_ops > "$LOGS.build.log" 2>&1; then
    grep -E "error|Error" "$LOGS.build.log" | head -30; tail -5 "$LOGS.build.log"
    echo "gpu_check: build failed or timed out (log: $LOGS.build.log)" >&2
    FAILED+=("build"); finish 1
  fi
  KVROUTE_BIN="$BUILD/kvroute"
fi

if [ -n "$PREBUILT" ]; then
  stamp "GPU tests: test_cuda_ops"
  echo "test_cuda_ops" > "$RUN/tests.how"
  if ! timeout "$(budget 120)" env LD_LIBRARY_PATH="$KV_LD" "$PREBUILT/bin/test_cuda_ops" 2>&1 | tee "$RUN/tests.log"; then
    FAILED+=("test_cuda_ops")
  elif grep -q "^\[  SKIPPED \]" "$RUN/tests.log"; then
    echo "gpu_check: GPU tests were skipped: the CUDA runtime sees no usable device (driver older than the toolkit?)" >&2
    FAILED+=("test_cuda_ops (tests skipped)")
  fi
else
  stamp "GPU tests: ctest -L gpu"
  # Every GPU test skips (and ctest counts it as passed) when the CUDA runtime sees no usable
  # device, e.g. a driver too old for this toolkit: that is a failure here, not a pass.
  echo "ctest -L gpu" > "$RUN/tests.how"
  if ! timeout "$(budget 120)" ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 100 --no-tests=error \
      2>&1 | tee "$RUN/tests.log"; then
    FAILED+=("ctest -L gpu")
  elif grep -q -e "\*\*\*Skipped" -e "Not Run" "$RUN/tests.log"; then
    echo "gpu_check: GPU tests were skipped: the CUDA runtime sees no usable device (driver older than nvcc?)" >&2
    FAILED+=("ctest -L gpu (tests skipped)")
  fi
fi

# GPT-2 124M's shape on the GPT-2-small-sized config (12 layers, d_model 768, 12 heads).
GPT2=(--set train.backend=cuda --set model.vocab_size=50304 --set model.context=1024 --set train.seq_len=1024
      --set train.batch_size=16 --set train.grad_accum=1)
BENCH=(env LD_LIBRARY_PATH="$KV_LD" "$KVROUTE_BIN" bench train configs/gpt2-small.yaml "${GPT2[@]}" --warmup 2)
echo "GPT-2 124M shape (12 x 768): 16 x 1024 tokens per step, vocab 50304" > "$RUN/bench.what"
ROW=0
bench() {  # bench NAME EXTRA_ARGS...: one `kvroute bench train` row, kept in $RUN/bench-NN.*
  local name="$1"; shift
  local base seconds
  ROW=$((ROW + 1)); base="$RUN/bench-$(printf %02d "$ROW")"
  echo "$name" > "$base.name"
  stamp "bench train: $name"
  seconds=$(budget 60)
  if [ "$seconds" -le 1 ]; then FAILED+=("bench $name (out of time)"); echo timeout > "$base.rc"; return; fi
  timeout "$seconds" "${BENCH[@]}" "$@" > "$base.log" 2>&1
  local rc=$?
  echo "$rc" > "$base.rc"
  if [ "$rc" -ne 0 ]; then tail -20 "$base.log"; FAILED+=("bench $name"); return; fi
  cat "$base.log"
}
attention_bench() {  # the attention kernels alone: head_dim 64 and 128, 16 x 1024 tokens, d_model 2048
  stamp "bench attention: bf16, head_dim 64 and 128, sequence length 1024"
  local seconds
  seconds=$(budget 60)
  if [ "$seconds" -le 1 ]; then FAILED+=("bench attention (out of time)"); echo timeout > "$RUN/attention.rc"; return; fi
  timeout "$seconds" env LD_LIBRARY_PATH="$KV_LD" "$KVROUTE_BIN" bench attention --backend cuda --precision bf16 \
    --head-dims 64,128 --seq-len 1024 --batch 16 --d-model 2048 --warmup 2 --repeats 10 > "$RUN/attention.log" 2>&1
  local rc=$?
  echo "$rc" > "$RUN/attention.rc"
  if [ "$rc" -ne 0 ]; then tail -20 "$RUN/attention.log"; FAILED+=("bench attention"); return; fi
  cat "$RUN/attention.log"
}
BF16=(--set train.precision=bf16 --steps 10 --peak-size 8192)
bench "bf16, stochastic routing" "${BF16[@]}"
bench "bf16, routing none" "${BF16[@]}" --set routing.mode=none
attention_bench
bench "fp32, stochastic routing" --set train.precision=fp32 --steps 3 --peak-size 4096
# The atomic dQ path (train.deterministic=false) exists only in the fp32 attention kernels.
bench "fp32, deterministic=false" --set train.precision=fp32 --set train.deterministic=false --steps 3 --peak-size 4096
bench "bf16 --profile (synced per op)" --set train.precision=bf16 --steps 2 --peak-size 0 --profile

finish 0
