#!/usr/bin/env bash
# Paper Table 1 / Fig. 5: pretrain with p_route in {0, .25, .5, .75}; evaluate each under
# retention 100/50/37.5/25% (full, cla:2, cla:3, cla:4 on 8 layers in smoke); shallow
# full-cache models with the same token budget whose KV bytes match those retentions.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
init_experiment pretrain "$@"

# small: p 0.25 is left out to fit the 3-hour suite (the claims compare 0 against >= 0.5).
if [ "$SIZE" = small ]; then P_VALUES="0 0.5 0.75"; else P_VALUES="0 0.25 0.5 0.75"; fi
STRATEGIES=full,cla:2,cla:3,cla:4
LAYERS=$(awk '/^  n_layers:/ { print $2 }' "$SIZE_CFG")
SHALLOW="$((LAYERS / 2)) $(((LAYERS + 2) / 3)) $((LAYERS / 4))"   # the cache layers cla:2, cla:3, cla:4 keep
case "$SIZE" in smoke) VAL_TOKENS=16384 ;; small) VAL_TOKENS=262144 ;; *) VAL_TOKENS=1048576 ;; esac

ckpts=(); shallow=()
for seed in $(seeds_for_size); do
  for p in $P_VALUES; do
    d=$RUNS/p${p}__s$seed
    train_async "$d" "$BASE_CFG" "$SIZE_CFG" "$EXP_DIR/routed.yaml" --set routing.p=$p --set train.seed=$seed
    ckpts+=("$d/model.h5")
  done
  for n in $SHALLOW; do
    d=$RUNS/shallow${n}L__s$seed
    train_async "$d" "$BASE_CFG" "$SIZE_CFG" --set model.n_layers=$n --set train.seed=$seed
    shallow+=("$d/model.h5")
  done
done
train_wait
eval_run "$RUNS/eval-routed" "${ckpts[@]}" -- --strategies $STRATEGIES --no-speed --val-tokens $VAL_TOKENS
eval_run "$RUNS/eval-shallow" "${shallow[@]}" -- --strategies full --no-speed --val-tokens $VAL_TOKENS
cp "$RUNS/eval-routed/results.csv" "$RESULTS/eval-routed.csv"
cp "$RUNS/eval-shallow/results.csv" "$RESULTS/eval-shallow.csv"

# KV bytes per token of the deep model's full cache (for the shallow rows' fraction).
full_bytes=$(eval_long "$RESULTS/eval-routed.csv" | awk -F'\t' '$3 == "full" { print $5; exit }')
{
  echo "# pretrain ($SIZE): validation loss under depth-wise KV sharing"
  echo
  echo "Rows: routing probability in pretraining (scheme any, one draw per step and layer). Columns:"
  echo "the sharing strategy at evaluation and the share of the full KV cache it keeps."
  echo "Validation loss in nats per token on $(csv_first "$RESULTS/eval-routed.csv" val_tokens) tokens of the held-out split; seeds: $(seeds_for_size | wc -w) ($(seeds_for_size | tr '\n' ' ' | sed 's/ $//'))."
  echo "Mean over seeds, '± sd (n)' when more than one."
  echo
  eval_long "$RESULTS/eval-routed.csv" |
    awk -F'\t' '{ printf "%s\t%s (%.1f%%)\t%s\n", $1, $3, 100 * $4, $6 }' | sed 's/^p\([0-9.]*\)\t/p_route=\1\t/' | pivot "trained with"
  echo
  echo "## shallow full-cache baselines (same token budget)"
  echo
  echo "Fewer layers, every layer keeps its cache; KV bytes per token against the ${LAYERS}-layer model's full cache."
  echo
  echo "| model | KV bytes/token | KV vs ${LAYERS}-layer full | val loss |"
  echo "|---|---:|---:|---:|"
  eval_long "$RESULTS/eval-shallow.csv" | awk -F'\t' -v full="$full_bytes" '
    { if (!($1 in n)) order[++m] = $1; n[$1]++; s[$1] += $6; ss[$1] += $6 * $6; b[$1] = $5 }
    END { for (i = 1; i <= m; i++) { k = order[i]; mean = s[k] / n[k]
            cell = sprintf("%.3f", mean)
            if (n[k] > 1) { v = (ss[k] - n[k] * mean * mean) / (n[k] - 1); cell = cell sprintf(" ± %.3f (n=%d)", sqrt(v > 0 ? v : 0), n[k]) }
            printf "| %s (full cache) | %d | %.1f%% | %s |\n", k, b[k], 100 * b[k] / full, cell } }'
  echo
  echo "Every point (KV bytes per token, val loss) is in the plot: $SIZE-kv-vs-loss.png."
} > "$RESULTS/pretrain.md"

# Plot: KV bytes per token against validation loss; routed models along their sharing
# strategies (best per KV size over seeds: mean), shallow baselines as one line.
dat=$RUNS/kv-vs-loss.dat
{
  eval_long "$RESULTS/eval-routed.csv" | awk -F'\t' '
    { k = $1 SUBSEP $5; if (!(k in n)) { order[++m] = k } n[k]++; s[k] += $6; lab[k] = $1; x[k] = $5 }
    END { prev = ""; for (i = 1; i <= m; i++) { k = order[i]
            if (lab[k] != prev) { if (prev != "") printf "\n\n"; printf "\"p_route=%s, cla:K sharing\" y\n", substr(lab[k], 2); prev = lab[k] }
            printf "%s %.6f\n", x[k], s[k] / n[k] } printf "\n\n" }'
  echo '"shallow, full cache" y'
  eval_long "$RESULTS/eval-shallow.csv" | awk -F'\t' '{ n[$5]++; s[$5] += $6 } END { for (x in n) printf "%s %.6f\n", x, s[x] / n[x] }' | sort -n
} > "$dat"
plot_lines "$RESULTS/$SIZE-kv-vs-loss.png" "pretrain ($SIZE): KV bytes per token vs validation loss" \
  "KV cache bytes per token" "validation loss (nats/token)" "$dat"
cp "$dat" "$RESULTS/kv-vs-loss.dat"
finish_experiment
