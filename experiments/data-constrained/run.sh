#!/usr/bin/env bash
# The regulariser claim: a larger model trained for many epochs over a small slice of the
# corpus, with and without stochastic routing; validation loss with the full cache and
# shared (cla:2, cla:4), and the validation curve during training (overfitting).
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
init_experiment data-constrained "$@"
if [ "$SIZE" = small ]; then
  # Every 20th file of the docs corpus (sorted) until 400 KB of text for training (~200K
  # tokens), every 20th from the 10th on until 200 KB for validation: disjoint, same mix of sources.
  find data/docs -name '*.txt' | sort -V | awk 'NR % 20 == 0' > "$RUNS/train.files"
  find data/docs -name '*.txt' | sort -V | awk 'NR % 20 == 10' > "$RUNS/val.files"
  take() { local limit=$1 f; : > "$2"; while IFS= read -r f; do [ "$(stat -c %s "$2")" -ge "$limit" ] && break; cat "$f" >> "$2"; echo >> "$2"; done; }
  take 400000 "$RUNS/train.txt" < "$RUNS/train.files"
  take 200000 "$RUNS/val.txt" < "$RUNS/val.files"
  TRAIN_DESC="every 20th file of data/docs until 400 KB"
  echo "- train.txt: $TRAIN_DESC ($(wc -c < "$RUNS/train.txt") bytes); val.txt: every 20th file from the 10th on until 200 KB (experiments/data-constrained/run.sh)" >> "$PROV"
  data=(--set data.shards= --set data.tokenizer=data/docs-sp2048 --set "data.train_path=$RUNS/train.txt" --set "data.val_path=$RUNS/val.txt")
else
if [ "$SIZE" = smoke ]; then TRAIN_LINES=400; else TRAIN_LINES=20000; fi
# The first TRAIN_LINES lines of the Bible for training, its last 1000 lines for validation.
head -n $TRAIN_LINES data/kjv.txt > "$RUNS/train.txt"
tail -n 1000 data/kjv.txt > "$RUNS/val.txt"
TRAIN_DESC="the first $TRAIN_LINES lines of data/kjv.txt"
echo "- \`head -n $TRAIN_LINES data/kjv.txt > train.txt; tail -n 1000 data/kjv.txt > val.txt\`" >> "$PROV"
data=(--set data.shards= --set "data.train_path=$RUNS/train.txt" --set "data.val_path=$RUNS/val.txt")
fi

ckpts=()
for seed in $(seeds_for_size); do
  train_async "$RUNS/no-routing__s$seed" "$BASE_CFG" "$SIZE_CFG" "$EXP_DIR/larger-$SIZE.yaml" "${data[@]}" --set train.seed=$seed
  train_async "$RUNS/routed-p0.5__s$seed" "$BASE_CFG" "$SIZE_CFG" "$EXP_DIR/larger-$SIZE.yaml" "$EXP_DIR/routed.yaml" "${data[@]}" --set train.seed=$seed
  ckpts+=("$RUNS/no-routing__s$seed/model.h5" "$RUNS/routed-p0.5__s$seed/model.h5")
done
train_wait
eval_run "$RUNS/eval" "${ckpts[@]}" -- --strategies full,cla:2,cla:4 --no-speed \
  --val-tokens $(case "$SIZE" in smoke) echo 16384 ;; small) echo 65536 ;; *) echo 1048576 ;; esac)
cp "$RUNS/eval/results.csv" "$RESULTS/eval.csv"

# Validation curves from each run's metrics.jsonl (the trainer's full-cache evaluations).
curves=$RESULTS/val-curves.tsv
for c in "${ckpts[@]}"; do
  d=$(dirname "$c")
  awk -v run="$(basename "$d")" -F'[:,} ]+' '/"val_loss"/ { print run "\t" $2 "\t" $4 }' "$d/metrics.jsonl"
done > "$curves"
train_tokens=$(grep -ho "[0-9]* train / [0-9]* val tokens" "${ckpts[0]%/model.h5}/train.log" | head -n 1)
epoch_windows=$(grep -ho "[0-9]* tokens per step, [0-9]* windows per epoch" "${ckpts[0]%/model.h5}/train.log" | head -n 1)
{
  echo "# data-constrained ($SIZE): many epochs over a small corpus, with and without routing"
  echo
  echo "Training text: $TRAIN_DESC ($train_tokens; $epoch_windows); validation: $([ "$SIZE" = small ] && echo "other files of the same corpus" || echo "its last 1000 lines")."
  echo "Seeds: $(seeds_for_size | wc -w); mean, '± sd (n)' when more than one."
  echo
  echo "## final validation loss (nats per token, $(csv_first "$RESULTS/eval.csv" val_tokens) tokens) by sharing strategy"
  echo
  eval_long "$RESULTS/eval.csv" | awk -F'\t' '{ printf "%s\t%s (%.1f%%)\t%s\n", $1, $3, 100 * $4, $6 }' | pivot "trained"
  echo
  echo "## during training (full cache, the trainer's evaluations every $(awk '/eval_interval/ { print $2 }' "$EXP_DIR/larger-$SIZE.yaml") steps)"
  echo
  echo "| run | best val loss | at step | final val loss | final - best |"
  echo "|---|---:|---:|---:|---:|"
  awk -F'\t' '{ if (!($1 in best) || $3 < best[$1]) { best[$1] = $3; at[$1] = $2 } if (!($1 in seen)) { order[++m] = $1; seen[$1] = 1 } last[$1] = $3 }
    END { for (i = 1; i <= m; i++) { r = order[i]; printf "| %s | %.3f | %d | %.3f | %+.3f |\n", r, best[r], at[r], last[r], last[r] - best[r] } }' "$curves"
} > "$RESULTS/data-constrained.md"
dat=$RUNS/val-curves.dat
awk -F'\t' '{ if ($1 != prev) { if (prev != "") printf "\n\n"; printf "\"%s\" y\n", $1; prev = $1 } print $2, $3 }' "$curves" > "$dat"
plot_lines "$RESULTS/$SIZE-val-curves.png" "data-constrained ($SIZE): validation loss during training (full cache)" \
  "step" "validation loss (nats/token)" "$dat"
finish_experiment
