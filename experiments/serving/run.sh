#!/usr/bin/env bash
# Paper Tables 4-5: serving through the inference engine with a depth-wise shared KV cache
# (strategy cla:g; g=1 is the full cache). Random weights from a config.
#   Table A: per prompt length and g: KV MiB, peak MiB, TTFT, decode tokens/s at batch 1.
#   Table B: one length, a batch sweep under a memory cap: a configuration whose measured peak
#            resident memory exceeds the cap is marked OOM (it is still run: the cap is a stated
#            budget checked against the measurement, not an allocator limit).
# Each (length, g, batch) is its own process, so peak RSS (GNU time's maximum resident set
# size) belongs to that configuration alone: weights + KV cache + scratch + runtime.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
init_experiment serving "$@"
CFG=$EXP_DIR/model-$SIZE.yaml
if [ "$SIZE" = smoke ]; then
  LENGTHS="128 512 1024"; DECODE_LEN=16; REPEATS=3
  SWEEP_LEN=128; BATCHES="1 4 16 64"; SWEEP_DECODE=8; SWEEP_REPEATS=1; CAP_MB=200
elif [ "$SIZE" = small ]; then
  # 4K-token prompts; cap 512 MiB, what g=1's cache alone takes at batch 8 (8 x 64 MiB; g=4: 128 MiB).
  LENGTHS="1024 4096"; DECODE_LEN=32; REPEATS=3
  SWEEP_LEN=4096; BATCHES="1 2 4 8"; SWEEP_DECODE=16; SWEEP_REPEATS=1; CAP_MB=512
  # Prompts are prefilled 512 tokens at a time (as serving systems do), so that activations
  # stay small beside the cache: one 4K-token prefill step would hold ~100 MiB per sequence.
  PREFILL_CHUNK=512
else
  LENGTHS="512 2048 8192"; DECODE_LEN=128; REPEATS=5
  SWEEP_LEN=2048; BATCHES="1 8 32 128 512"; SWEEP_DECODE=64; SWEEP_REPEATS=3; CAP_MB=40960
fi
GS="1 2 4 8"
PREFILL_CHUNK=${PREFILL_CHUNK:-0}
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time (GNU time) is needed for peak memory: apt-get install time" >&2; exit 2; }
strategy_of() { if [ "$1" = 1 ]; then echo full; else echo "cla:$1"; fi; }

# bench LABEL LEN BATCH DECODE_LEN REPEATS G: one bench generate run; appends a TSV row to $rows.
bench() {
  local label=$1 len=$2 batch=$3 dlen=$4 reps=$5 g=$6 out=$RUNS/$1.json
  run "$RUNS/$label.log" /usr/bin/time -f %M -o "$RUNS/$label.rss" "$KVROUTE_BIN" bench generate "$CFG" \
    --strategy "$(strategy_of "$g")" --prompt-len "$len" --decode-batch "$batch" --decode-len "$dlen" --repeats "$reps" \
    --prefill-chunk "$PREFILL_CHUNK" --json
  # the JSON is what the command printed (run sends it to the log)
  sed -n '/^{/,$p' "$RUNS/$label.log" > "$out"
  local kv ttft tps rss cl
  cl=$(grep -o '"cache_layers": [0-9]*' "$out" | awk '{ print $2 }')
  kv=$(grep -o '"kv_bytes": [0-9]*' "$out" | awk '{ print $2 }')
  ttft=$(grep -o '"ttft_ms_median": [0-9.e+-]*' "$out" | awk '{ print $2 }')
  tps=$(grep -o '"decode_tokens_per_s_median": [0-9.e+-]*' "$out" | awk '{ print $2 }')
  rss=$(tail -n 1 "$RUNS/$label.rss")
  [ -n "$kv" ] && [ -n "$ttft" ] && [ -n "$tps" ] && [ -n "$rss" ] || { echo "error: could not read $out / $RUNS/$label.rss" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$len" "$g" "$batch" "$kv" "$rss" "$ttft" "$tps" "$cl" >> "$rows"
}

rows=$RUNS/lengths.tsv; : > "$rows"
for len in $LENGTHS; do for g in $GS; do bench "len$len-g$g" "$len" 1 "$DECODE_LEN" "$REPEATS" "$g"; done; done
cp "$rows" "$RESULTS/lengths.tsv"
rows=$RUNS/batches.tsv; : > "$rows"
for b in $BATCHES; do for g in $GS; do bench "batch$b-g$g" "$SWEEP_LEN" "$b" "$SWEEP_DECODE" "$SWEEP_REPEATS" "$g"; done; done
cp "$rows" "$RESULTS/batches.tsv"

{
  echo "# serving ($SIZE): depth-wise shared KV cache in the inference engine"
  echo
  echo "Model: \`${CFG#$REPO/}\` (random weights), strategy cla:g (g = 1: full cache). One process per row;"
  echo "KV MiB = the cache allocated for that run; peak MiB = GNU time's maximum resident set size of the"
  echo "process (weights, cache, scratch, runtime). TTFT = prefill of the prompt + first token, batch 1;"
  echo "decode tokens/s at batch 1 for $DECODE_LEN tokens. Medians of $REPEATS timed runs after a warm-up; prefill in"
  echo "steps of $([ "$PREFILL_CHUNK" = 0 ] && echo "whole prompts" || echo "$PREFILL_CHUNK tokens per prompt") (\`--prefill-chunk $PREFILL_CHUNK\`); one run of"
  echo "the whole table, on a machine shared with other jobs (load average in provenance.md)."
  echo
  echo "| prompt tokens | g | cache layers kept | KV MiB | peak MiB | TTFT ms | decode tok/s |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' -v L="$(awk '/^  n_layers:/ { print $2 }' "$CFG")" '{ printf "| %s | %s | %s/%s | %.2f | %.1f | %.1f | %.1f |\n", $1, $2, $8, L, $4 / 1048576, $5 / 1024, $6, $7 }' "$RESULTS/lengths.tsv"
  echo
  echo "## batch sweep at $SWEEP_LEN prompt tokens + $SWEEP_DECODE decoded, memory cap $CAP_MB MiB"
  echo
  echo "OOM = the measured peak resident memory exceeded the $CAP_MB MiB cap (the run itself completed)."
  echo "Decode tokens/s counts every sequence of the batch; median of $SWEEP_REPEATS timed run(s)."
  echo
  echo "| batch | g | KV MiB | peak MiB | fits $CAP_MB MiB | decode tok/s |"
  echo "|---:|---:|---:|---:|---|---:|"
  awk -F'\t' -v cap="$CAP_MB" '{ peak = $5 / 1024; printf "| %s | %s | %.2f | %.1f | %s | %s |\n", $3, $2, $4 / 1048576, peak, peak <= cap ? "yes" : "**OOM**", peak <= cap ? sprintf("%.1f", $7) : sprintf("(%.1f)", $7) }' "$RESULTS/batches.tsv"
  echo
  # The smallest batch at which the full cache (g=1) no longer fits the cap but g=4 does.
  awk -F'\t' -v cap="$CAP_MB" '{ peak[$3, $2] = $5 / 1024; if (!($3 in seen)) { seen[$3] = 1; order[++m] = $3 } }
    END { for (i = 1; i <= m; i++) { b = order[i]
            if (((b, 1) in peak) && ((b, 4) in peak) && peak[b, 1] > cap && peak[b, 4] <= cap) {
              printf "First batch at which g=1 exceeds the %d MiB cap while g=4 fits: **%s** (peak %.1f MiB against %.1f MiB).\n", cap, b, peak[b, 1], peak[b, 4]; exit } }
          printf "No batch of this sweep has g=1 over the %d MiB cap with g=4 under it.\n", cap }' "$RESULTS/batches.tsv"
} > "$RESULTS/serving.md"

dat=$RUNS/ttft.dat
for g in $GS; do
  echo "\"g=$g ($(strategy_of $g))\" y"
  awk -F'\t' -v g="$g" '$2 == g { print $1, $6 }' "$RESULTS/lengths.tsv"
  printf '\n\n'
done > "$dat"
plot_lines "$RESULTS/$SIZE-ttft.png" "serving ($SIZE): time to first token against prompt length" "prompt tokens" "TTFT ms" "$dat" logx
finish_experiment
