#!/usr/bin/env bash
# One routed model under every strategy the eval harness offers (full, cla:K, first, half,
# keep:N, greedy:N) and random cache sets that contain layer 0 (list:...; every other
# layer reads the nearest cache layer below it).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
init_experiment strategy-sweep "$@"
case "$SIZE" in smoke) VAL_TOKENS=16384; RANDOM_SETS=6 ;; small) VAL_TOKENS=262144; RANDOM_SETS=6 ;; *) VAL_TOKENS=1048576; RANDOM_SETS=12 ;; esac
LAYERS=$(awk '/^  n_layers:/ { print $2 }' "$SIZE_CFG")

# Random cache sets: seeded (awk srand), sizes 2..LAYERS-1, always containing layer 0.
random_lists=$(awk -v L="$LAYERS" -v n="$RANDOM_SETS" 'BEGIN { srand(20260101)
  for (r = 0; r < n; r++) {
    size = 2 + r % (L - 2); delete in_set; in_set[0] = 1; have = 1
    while (have < size) { c = 1 + int(rand() * (L - 1)); if (!(c in in_set)) { in_set[c] = 1; have++ } }
    map = ""; src = 0
    for (l = 0; l < L; l++) { if (l in in_set) src = l; map = map (l ? "," : "") src }
    printf "%slist:%s", (r ? ";" : ""), map } }')
STRATEGIES="full;cla:2;cla:3;cla:4;first;half;keep:2;keep:3;keep:$((LAYERS / 2));greedy:2;greedy:$((LAYERS / 2));$random_lists"

ckpts=()
for seed in $(seeds_for_size); do
  routed=$(routed_p05_run "$seed")
  train_async "$routed" "$BASE_CFG" "$SIZE_CFG" "$EXP_DIR/routed.yaml" --set train.seed=$seed
  ckpts+=("$routed/model.h5")
done
train_wait
eval_run "$RUNS/eval" "${ckpts[@]}" -- --strategies "$STRATEGIES" --no-speed --val-tokens $VAL_TOKENS
cp "$RUNS/eval/results.csv" "$RESULTS/eval.csv"
cp "$RUNS/eval/results.md" "$RESULTS/eval-full-report.md"
[ -f "$RUNS/eval/loss_vs_kv.png" ] && cp "$RUNS/eval/loss_vs_kv.png" "$RESULTS/$SIZE-loss-vs-kv.png"
{
  echo "# strategy sweep ($SIZE): one routed model (scheme any, p 0.5) under every sharing strategy"
  echo
  echo "Validation loss (nats per token, $(csv_first "$RESULTS/eval.csv" val_tokens) held-out tokens) for each strategy, sorted by KV kept."
  echo "Random cache sets contain layer 0 (seeded); greedy:N is searched on the validation tokens themselves"
  echo "(so it is optimistic). Seeds: $(seeds_for_size | wc -w); mean, '± sd (n)' when more than one."
  echo "greedy paths and every column of the harness: eval-full-report.md."
  echo
  echo "| strategy | source map | cache layers | KV kept | val loss | loss vs full |"
  echo "|---|---|---:|---:|---:|---:|"
  csv_to_tsv "$RESULTS/eval.csv" | awk -F'\t' '$1 == "checkpoint" { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { k = $col["strategy"]; if (!(k in n)) order[++m] = k; n[k]++; s[k] += $col["val_loss"]; ss[k] += $col["val_loss"] ^ 2
      map[k] = $col["source_map"]; cl[k] = $col["cache_layers"] "/" $col["n_layers"]; kv[k] = $col["kv_fraction"] }
    END { for (i = 1; i <= m; i++) if (order[i] == "full") full = s["full"] / n["full"]
      for (i = 1; i <= m; i++) { k = order[i]; mean = s[k] / n[k]; cell = sprintf("%.3f", mean)
        if (n[k] > 1) { v = (ss[k] - n[k] * mean ^ 2) / (n[k] - 1); cell = cell sprintf(" ± %.3f (n=%d)", sqrt(v > 0 ? v : 0), n[k]) }
        printf "%09.6f\t| %s | %s | %s | %.1f%% | %s | %+.2f%% |\n", 1 - kv[k], k, map[k], cl[k], 100 * kv[k], cell, 100 * (mean / full - 1) } }' | sort -s -t$'\t' -k1,1 | cut -f2-
} > "$RESULTS/strategy-sweep.md"
finish_experiment
