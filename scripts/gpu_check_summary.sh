#!/usr/bin/env bash
# The summary block scripts/gpu_check.sh prints at its end, from the outputs it kept in one
# folder. A script of its own so tests/test_gpu_check.cpp can check the parsing on the CPU,
# on real kvroute output and on captured ctest / GoogleTest logs.
#
#   scripts/gpu_check_summary.sh DIR
#
# DIR holds (each optional; what is missing shows as "-" or "not run"):
#   gpu.txt                      nvidia-smi's name, memory, driver, compute capability line
#   tests.log, tests.how         the GPU tests' output and how they ran ("ctest -L gpu" or
#                                "test_cuda_ops": the format is recognised from the text)
#   bench.what                   what the bench rows measure (one line: the shape)
#   bench-NN.name/.log/.rc       `kvroute bench train` rows in order: row name, output, exit
#                                status ("timeout" when the budget was spent before it ran)
#   attention.log, attention.rc  `kvroute bench attention` (head_dim 64 and 128, seq 1024)
#   failed.txt                   one failed step per line
#   elapsed                      seconds the whole check took
# Prints the block on stdout. Exit status: 0 (it only reports).
set -uo pipefail
dir="${1:?usage: gpu_check_summary.sh DIR}"
[ -d "$dir" ] || { echo "gpu_check_summary: no folder $dir" >&2; exit 1; }

# "P passed, F failed, S skipped" from ctest's or GoogleTest's output.
test_counts() {
  awk '
    /tests passed, [0-9]+ tests? failed out of [0-9]+/ {
      ctest = 1
      for (i = 1; i <= NF; i++) { if ($i == "failed") failed = $(i - 2); if ($i == "of") total = $(i + 1) }
    }
    /\*\*\*Skipped/ { ctest_skipped++ }
    /^\[  PASSED  \] [0-9]+ tests?\./ { gtest = 1; passed = $4 }
    /^\[  SKIPPED \] [0-9]+ tests?, listed below/ { g_skipped = $4 }
    /^\[  FAILED  \] [0-9]+ tests?, listed below/ { g_failed = $4 }
    /^\[       OK \] / { ok_lines++ }
    /^\[  FAILED  \] [A-Za-z_0-9]+\.[A-Za-z_0-9\/]+ \(/ { failed_lines++ }
    /^\[  SKIPPED \] [A-Za-z_0-9]+\.[A-Za-z_0-9\/]+ \(/ { skipped_lines++ }
    END {
      if (ctest) {
        s = ctest_skipped + 0
        printf "%d passed, %d failed, %d skipped\n", total - failed - s, failed, s
      } else if (gtest) {
        printf "%d passed, %d failed, %d skipped\n", passed, g_failed + 0, g_skipped + 0
      } else if (ok_lines + failed_lines + skipped_lines > 0) {
        printf "%d passed, %d failed, %d skipped (incomplete: the run did not finish)\n", ok_lines, failed_lines, skipped_lines
      } else {
        print "no results (the tests did not run or printed nothing)"
      }
    }' "$1"
}

# The value column of a `kvroute bench train` table row whose label starts with $2.
table_value() {
  awk -F'|' -v key="$2" '{ label = $2; gsub(/^ +| +$/, "", label) }
    index(label, key) == 1 { v = $3; gsub(/^ +| +$/, "", v); print v; exit }' "$1"
}

echo "GPU         $( [ -s "$dir/gpu.txt" ] && head -1 "$dir/gpu.txt" || echo "-")"

if [ -f "$dir/tests.log" ]; then
  echo "tests       $(test_counts "$dir/tests.log") ($(cat "$dir/tests.how" 2>/dev/null || echo "GPU tests"))"
else
  echo "tests       not run"
fi

shopt -s nullglob
names=("$dir"/bench-*.name)
if [ ${#names[@]} -gt 0 ]; then
  echo "benchmarks  kvroute bench train$( [ -s "$dir/bench.what" ] && echo ", $(head -1 "$dir/bench.what")"); MFU against"
  echo "            the cuBLASLt bf16 GEMM peak measured after each step (fp32 rows: an sgemm) and, for bf16"
  echo "            rows, against the 989 TFLOP/s bf16 dense datasheet figure (llm.c's denominator)"
  printf '  %-32s %10s %12s %9s %9s  %s\n' "row" "step time" "tokens/s" "MFU" "MFU 989T" "device memory peak"
  routed="" unrouted=""
  for f in "${names[@]}"; do
    base="${f%.name}"
    name=$(cat "$f")
    rc=$(cat "$base.rc" 2>/dev/null || echo "?")
    if [ "$rc" != 0 ]; then
      why="FAILED (exit $rc)"
      [ "$rc" = timeout ] && why="not run (out of time)"
      [ "$rc" = 124 ] && why="FAILED (timed out)"
      printf '  %-32s %s\n' "$name" "$why"
      continue
    fi
    step=$(table_value "$base.log" "step time")
    tok=$(table_value "$base.log" "tokens/s")
    mfu=$(table_value "$base.log" "MFU")
    mflops=$(table_value "$base.log" "model FLOP/s")
    mem=$(table_value "$base.log" "device memory peak" | sed 's/,.*//')
    sheet="-"
    case "$name" in
      bf16*) [ -n "$mflops" ] && sheet=$(awk -v g="${mflops% G}" 'BEGIN { printf "%.1f%%", 100 * g / 989000 }') ;;
    esac
    printf '  %-32s %10s %12s %9s %9s  %s\n' "$name" "${step:--}" "${tok:--}" "${mfu:--}" "$sheet" "${mem:--}"
    case "$name" in
      "bf16, stochastic routing") routed="$tok" ;;
      "bf16, routing none") unrouted="$tok" ;;
    esac
  done
  # Step time is tokens per step / tokens/s: the ratio of tokens/s has more digits than the table's seconds.
  if [ -n "$routed" ] && [ -n "$unrouted" ]; then
    awk -v r="$routed" -v u="$unrouted" 'BEGIN {
      if (r > 0) printf "routing     bf16 step time, stochastic routing against none: %+.2f%% (goal: under 2%%)\n", 100 * (u / r - 1) }'
  fi
fi

if [ -f "$dir/attention.rc" ]; then
  rc=$(cat "$dir/attention.rc")
  if [ "$rc" != 0 ]; then
    why="FAILED (exit $rc)"
    [ "$rc" = timeout ] && why="not run (out of time)"
    [ "$rc" = 124 ] && why="FAILED (timed out)"
    echo "attention   kvroute bench attention: $why"
  else
    echo "attention   kvroute bench $(head -1 "$dir/attention.log" | sed 's/ (heads = d_model \/ head_dim)//; s/; median of.*//')"
    echo "            (TFLOP/s; backward FLOPs counted as 2.5 x forward, as FlashAttention-2 does)"
    # | head_dim | heads | fwd ms | fwd TFLOP/s | bwd ms | bwd TFLOP/s |
    awk -F'|' '$2 ~ /^ *[0-9]+ *$/ && NF >= 8 {
      for (i = 2; i <= 7; i++) gsub(/ /, "", $i)
      printf "  head_dim %-4s forward %8s TFLOP/s (%s ms)   backward %8s TFLOP/s (%s ms)\n", $2, $5, $4, $7, $6
      rows++ }
      END { if (!rows) print "  (no result rows in the output)" }' "$dir/attention.log"
  fi
fi

elapsed=$(cat "$dir/elapsed" 2>/dev/null || echo "?")
if [ -s "$dir/failed.txt" ]; then
  echo "result      FAILED after ${elapsed}s: $(paste -sd';' "$dir/failed.txt" | sed 's/;/; /g')"
else
  echo "result      all passed in ${elapsed}s"
fi
