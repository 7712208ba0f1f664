#!/usr/bin/env bash
# Paper Table 3: stochastic routing against CLA@2, CLA@4 (trained with the fixed map) and
# RD-CLA@2, RD-CLA@4 (a coin flip with p=.6 between the group's cache and the layer's own),
# each evaluated at retention 100/50/25% (full, cla:2, cla:4).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
init_experiment ablation "$@"
case "$SIZE" in smoke) VAL_TOKENS=16384 ;; small) VAL_TOKENS=262144 ;; *) VAL_TOKENS=1048576 ;; esac

ckpts=()
for seed in $(seeds_for_size); do
  common=("$BASE_CFG" "$SIZE_CFG")
  routed=$(routed_p05_run "$seed")
  train_async "$routed" "${common[@]}" "$EXP_DIR/routed.yaml" --set train.seed=$seed
  ckpts+=("$routed/model.h5")
  for k in 2 4; do
    train_async "$RUNS/CLA@${k}__s$seed" "${common[@]}" "$EXP_DIR/cla.yaml" --set routing.strategy=cla:$k --set train.seed=$seed
    train_async "$RUNS/RD-CLA@${k}__s$seed" "${common[@]}" "$EXP_DIR/rdcla.yaml" --set routing.group=$k --set train.seed=$seed
    ckpts+=("$RUNS/CLA@${k}__s$seed/model.h5" "$RUNS/RD-CLA@${k}__s$seed/model.h5")
  done
done
train_wait
eval_run "$RUNS/eval" "${ckpts[@]}" -- --strategies full,cla:2,cla:4 --no-speed --val-tokens $VAL_TOKENS
# At the small size the routed runs are pretrain's, named p0.5: label them as here.
routed_label() { sed "s/^p0\.5\t/routed-p0.5\t/"; }
cp "$RUNS/eval/results.csv" "$RESULTS/eval.csv"
{
  echo "# ablation ($SIZE): routed training against CLA and RD-CLA baselines"
  echo
  echo "Rows: how the model was trained (routed: scheme any, p 0.5; CLA@K: the fixed group map;"
  echo "RD-CLA@K: p 0.6 coin flip between the group's first layer and the layer's own). Columns: the"
  echo "sharing strategy at evaluation and the share of the KV cache it keeps. Validation loss (nats per"
  echo "token, $(csv_first "$RESULTS/eval.csv" val_tokens) held-out tokens); seeds: $(seeds_for_size | wc -w); mean, '± sd (n)' when more than one."
  echo
  eval_long "$RESULTS/eval.csv" | routed_label | awk -F'\t' '{ printf "%s\t%s (%.1f%%)\t%s\n", $1, $3, 100 * $4, $6 }' | pivot "trained as"
} > "$RESULTS/ablation.md"
dat=$RUNS/retention-vs-loss.dat
eval_long "$RESULTS/eval.csv" | routed_label | awk -F'\t' '
  { k = $1 SUBSEP $4; if (!(k in n)) order[++m] = k; n[k]++; s[k] += $6; lab[k] = $1; x[k] = 100 * $4 }
  END { prev = ""; for (i = 1; i <= m; i++) { k = order[i]
          if (lab[k] != prev) { if (prev != "") printf "\n\n"; printf "\"%s\" y\n", lab[k]; prev = lab[k] }
          printf "%.2f %.6f\n", x[k], s[k] / n[k] } printf "\n\n" }' > "$dat"
plot_lines "$RESULTS/$SIZE-ablation.png" "ablation ($SIZE): validation loss against KV cache kept" \
  "KV cache kept (% of full)" "validation loss (nats/token)" "$dat"
finish_experiment
