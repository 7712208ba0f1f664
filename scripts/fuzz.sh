#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ (see fuzz/README.md) for a given time each, one after the
# other; then keeps one failing input per cause (crash, leak, hang, out of memory: the sanitizer's
# SUMMARY and the innermost kvroute frame), minimizes crashes and leaks, and saves each as
# fuzz/<into>/<target>/<kind>-<sha1>, its cause printed and added to build-fuzz/findings.txt.
# Not part of CI (ctest only replays fuzz/seeds and fuzz/regression).
#
#   scripts/fuzz.sh [--time SECONDS] [--into found|regression] [--list] [TARGET...]
#
#   --time S     seconds per target (default 300)
#   --into DIR   where minimized inputs go (default found: fuzz/found/ is not replayed by CI, so
#                an input the current code still crashes on waits there for its fix; move it to
#                fuzz/regression/<target>/ together with the fix)
#   --list       print the target names and exit
#   TARGET       e.g. safetensors_header (default: every fuzz/fuzz_*.cpp)
#
# The working corpus grows in build-fuzz/corpus/<target>/ (kept between runs, not committed);
# logs, raw artifacts and a summary line per target (build-fuzz/fuzz-summary.txt) go beside it.
# Builds with the "fuzz" CMake preset (clang, -fsanitize=fuzzer,address,undefined); installs
# Debian's clang and libclang-rt-14-dev first when missing. FUZZ_JOBS=N builds with N jobs.
set -euo pipefail
cd "$(dirname "$0")/.."

TIME=300
INTO=found
TARGETS=()
all_targets() { for f in fuzz/fuzz_*.cpp; do basename "$f" .cpp | sed 's/^fuzz_//'; done; }
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME="$2"; shift 2 ;;
    --into) INTO="$2"; shift 2 ;;
    --list) all_targets; exit 0 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
case "$INTO" in found|regression) ;; *) echo "fuzz.sh: --into is found or regression" >&2; exit 2 ;; esac
[ ${#TARGETS[@]} -eq 0 ] && mapfile -t TARGETS < <(all_targets)
for t in "${TARGETS[@]}"; do
  [ -f "fuzz/fuzz_$t.cpp" ] || { echo "fuzz.sh: no target $t (fuzz/fuzz_$t.cpp); --list shows them" >&2; exit 2; }
done

# Largest input per target: above the largest seed, small enough to keep executions fast.
max_len() {
  case "$1" in
    tokenizer_json|checkpoint) echo 65536 ;;
    safetensors_header) echo 32768 ;;
    tokenizer_model) echo 16384 ;;
    safetensors_index|yaml_config) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

# Leak checking per target (libFuzzer after each input, ASan at exit). checkpoint: off, because
# libhdf5 (Debian's, not instrumented) leaks an object-header cache entry when H5Aexists fails on
# some damaged files (one such input is in fuzz/found/checkpoint/), and nearly every mutation of a
# checkpoint would report that leak again.
leaks() {
  case "$1" in
    checkpoint) echo 0 ;;
    *) echo 1 ;;
  esac
}

missing=()
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fuzz.sh: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

BUILD=build-fuzz
cmake --preset fuzz >/dev/null
cmake --build "$BUILD" -j "${FUZZ_JOBS:-$(nproc)}" --target "${TARGETS[@]/#/fuzz_}"

# One core per fuzzer (the tokenizers use OpenMP); UBSan findings stop the run with a stack.
export OMP_NUM_THREADS=1
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
SUMMARY="$BUILD/fuzz-summary.txt"

# The cause of a failing input in one line (the report's SUMMARY and its innermost frame in
# kvroute's code), or nothing when the input runs clean.
cause_of() {  # BIN INPUT FLAGS...
  local bin="$1" input="$2" report summary frame; shift 2
  report=$("$bin" -timeout=10 -rss_limit_mb=2048 "$@" "$input" 2>&1) && return 0
  summary=$(grep -m1 '^SUMMARY:' <<<"$report" || true)
  frame=$(grep -m1 -E '^ +#[0-9]+ .* in .*/(src|data_tools)/' <<<"$report" | sed -E 's/.* in //; s#/[^ ]*/(src|data_tools)/#\1/#' || true)
  echo "${summary:-failed, no sanitizer summary}${frame:+ at $frame}"
}

for t in "${TARGETS[@]}"; do
  bin="$BUILD/fuzz/fuzz_$t"
  corpus="$BUILD/corpus/$t" artifacts="$BUILD/artifacts/$t" log="$BUILD/logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")" "fuzz/$INTO/$t"
  rm -f "$artifacts"/*
  inputs=("$corpus" "fuzz/seeds/$t")
  [ -d "fuzz/regression/$t" ] && inputs+=("fuzz/regression/$t")
  flags=(-detect_leaks="$(leaks "$t")")
  export ASAN_OPTIONS="detect_leaks=$(leaks "$t")"
  echo "=== $t: ${TIME}s, max_len $(max_len "$t"), ${flags[*]}, log $log"
  # -fork=1: one worker process at a time that libFuzzer restarts after a crash, timeout or OOM
  # (-ignore_*), so one finding does not end the run; new inputs land in the first corpus dir.
  start=$(date +%s)
  "$bin" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -max_total_time="$TIME" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")" "${flags[@]}" \
    -artifact_prefix="$artifacts/" "${inputs[@]}" >"$log" 2>&1 || true
  seconds=$(( $(date +%s) - start ))
  # Fork mode's status line: "#EXECS: cov: .. ft: .. corp: .. exec/s .. oom/timeout/crash: O/T/C time: ..".
  stats=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
  execs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$stats")
  otc=$(sed -nE 's|.*oom/timeout/crash: ([0-9/]+).*|\1|p' <<<"$stats")

  # Triage, smallest first: one input per cause (a fork run finds the same bug many times);
  # timeouts and OOMs take seconds each to rerun, so at most 3 of each are looked at.
  declare -A seen=()
  saved=0 timeouts=0 ooms=0
  while read -r a; do
    [ -n "$a" ] || continue
    kind=$(basename "$a" | sed -E 's/-.*//')  # crash, leak, timeout, oom
    case "$kind" in
      timeout) timeouts=$((timeouts + 1)); [ $timeouts -le 3 ] || continue ;;
      oom) ooms=$((ooms + 1)); [ $ooms -le 3 ] || continue ;;
      crash|leak) ;;
      *) continue ;;  # slow-unit-*: no failure
    esac
    cause=$(cause_of "$bin" "$a" "${flags[@]}")
    [ -n "$cause" ] || { echo "  $a: does not fail when rerun alone, skipped"; continue; }
    [ -z "${seen[$cause]:-}" ] || continue
    seen[$cause]=1
    min="$artifacts/min.$(basename "$a")"
    if [ "$kind" = crash ] || [ "$kind" = leak ]; then
      "$bin" -minimize_crash=1 -max_total_time=60 -timeout=10 -rss_limit_mb=2048 "${flags[@]}" \
        -exact_artifact_path="$min" "$a" >>"$log" 2>&1 || true
    fi
    # Timeouts and OOMs are kept as found (minimizing them is slow), as is a crash whose
    # minimized form fails differently.
    if [ ! -f "$min" ] || [ "$(cause_of "$bin" "$min" "${flags[@]}")" != "$cause" ]; then cp "$a" "$min"; fi
    dest="fuzz/$INTO/$t/$kind-$(sha1sum "$min" | cut -c1-16)"
    [ -f "$dest" ] && continue
    cp "$min" "$dest"
    saved=$((saved + 1))
    echo "  $dest ($(stat -c %s "$dest") bytes): $cause"
    echo "$t $dest $cause" >>"$BUILD/findings.txt"
  done < <(ls -Sr "$artifacts"/* 2>/dev/null)
  unset seen
  line="$t: ${seconds}s, ${execs:-?} executions, oom/timeout/crash ${otc:-0/0/0}, $saved new input(s) in fuzz/$INTO/$t/, corpus $(ls "$corpus" | wc -l) files"
  echo "  $line"
  echo "$(date -u +%FT%TZ) $line" >>"$SUMMARY"
done
