#!/usr/bin/env bash
# Paper Table 2 on an imported model: a Hugging Face model folder is imported, fine-tuned for a
# short budget with p_route 0.6 and, as the control, plainly; both and the imported model are
# evaluated at 100/50/25% of the KV cache (full, cla:2, cla:4) for validation loss and the
# retrieval probe.
#
#   HF_MODEL=DIR experiments/finetune-hf/run.sh [--size smoke|paper]
#       DIR: a Llama / Mistral / Qwen2 / Qwen3 folder (config.json, safetensors, tokenizer files)
#   experiments/finetune-hf/run.sh [--size smoke|paper]
#       without HF_MODEL (this machine cannot download weights): a model pretrained here without
#       routing is exported (kvroute export hf) and that folder is what gets imported, so the
#       whole path runs; the import is checked against the pretrained model (same loss, bit for bit).
# The training text is the default corpus interleaved with probe-format documents, as in
# experiments/finetune (see its README for why), tokenized with the model's own tokenizer.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
case " $* " in *" small "*|*" --size=small "*)
  echo "error: finetune-hf has no small size (the small suite tests fine-tuning with experiments/finetune); use --size smoke, or --size paper with HF_MODEL" >&2
  exit 2 ;;
esac
init_experiment finetune-hf "$@"
if [ "$SIZE" = smoke ]; then
  PRE_STEPS=600; FT_STEPS=200; TRAIN_LINES=8000; PROBE_ITEMS=100; VAL_TOKENS=16384
else
  PRE_STEPS=5000; FT_STEPS=500; TRAIN_LINES=60000; PROBE_ITEMS=1000; VAL_TOKENS=1048576
fi
PAIRS=3
seed=$(seeds_for_size | head -n 1)
TEXT_TOKENIZER=$(awk '/^  tokenizer:/ { print $2 }' "$BASE_CFG")

# The data for pretraining here (if needed) and fine-tuning: built once the tokenizer is known.
make_data() {
  local tok=$1
  run "$RUNS/probe-train.log" "$KVROUTE_BIN" data probe --tokenizer "$tok" --out "$RUNS/probe-train.txt" \
    --n $TRAIN_LINES --pairs $PAIRS --seed 101 --format text
  run "$RUNS/probe-val.log" "$KVROUTE_BIN" data probe --tokenizer "$tok" --out "$RUNS/probe-val.txt" \
    --n 1000 --pairs $PAIRS --seed 102 --format text
  run "$RUNS/probe.log" "$KVROUTE_BIN" data probe --tokenizer "$tok" --out "$RUNS/probe.tsv" \
    --n $PROBE_ITEMS --pairs $PAIRS --seed 103
  paste -d'\n' <(head -n $TRAIN_LINES data/kjv.txt) <(grep -v '^$' "$RUNS/probe-train.txt") > "$RUNS/mix-train.txt"
  paste -d'\n' <(tail -n 1000 data/kjv.txt) <(grep -v '^$' "$RUNS/probe-val.txt") > "$RUNS/mix-val.txt"
  echo "- \`paste -d'\\n' <(head -n $TRAIN_LINES data/kjv.txt) <(grep -v '^\$' probe-train.txt) > mix-train.txt\`; validation: the last 1000 lines of data/kjv.txt with probe-val.txt" >> "$PROV"
}

ROUND_TRIP=0
if [ -z "${HF_MODEL:-}" ]; then
  ROUND_TRIP=1
  make_data "$TEXT_TOKENIZER"
  pre=$RUNS/pretrained-p0__s$seed
  train_run "$pre" "$BASE_CFG" "$SIZE_CFG" --set data.shards= --set "data.train_path=$RUNS/mix-train.txt" \
    --set "data.val_path=$RUNS/mix-val.txt" --set train.steps=$PRE_STEPS --set train.seed=$seed
  rm -rf "$RUNS/hf-model"
  run "$RUNS/export.log" "$KVROUTE_BIN" export hf "$pre/model.h5" --out "$RUNS/hf-model" --dtype fp32
  HF_MODEL=$RUNS/hf-model
fi
HF_MODEL=$(cd "$HF_MODEL" && pwd)

rm -rf "$RUNS/imported__s$seed"
mkdir -p "$RUNS/imported__s$seed"
run "$RUNS/import.log" "$KVROUTE_BIN" import hf "$HF_MODEL" --out "$RUNS/imported__s$seed/model.h5" \
  --tokenizer-out "$RUNS/imported-tokenizer" --force
TOKENIZER=$RUNS/imported-tokenizer
[ "$ROUND_TRIP" = 1 ] || make_data "$TOKENIZER"
data=(--set data.shards= --set "data.tokenizer=$TOKENIZER" --set "data.train_path=$RUNS/mix-train.txt"
      --set "data.val_path=$RUNS/mix-val.txt")

# model.init_from takes the folder itself: its config.json sets the model keys.
for kind in plain routed; do
  train_run "$RUNS/finetuned-${kind}__s$seed" "$BASE_CFG" "$SIZE_CFG" "$EXP_DIR/../finetune/finetune-$kind.yaml" \
    "${data[@]}" --set "model.init_from=$HF_MODEL" --set train.steps=$FT_STEPS \
    --set train.warmup_steps=$((FT_STEPS / 10)) --set train.seed=$((seed + 100))
done
ckpts=("$RUNS/imported__s$seed/model.h5" "$RUNS/finetuned-plain__s$seed/model.h5" "$RUNS/finetuned-routed__s$seed/model.h5")
[ "$ROUND_TRIP" = 1 ] && ckpts=("$RUNS/pretrained-p0__s$seed/model.h5" "${ckpts[@]}")
eval_run "$RUNS/eval" "${ckpts[@]}" -- --strategies full,cla:2,cla:4 --no-speed --probe "$RUNS/probe.tsv" \
  --val-tokens $VAL_TOKENS --seq-len "$(awk '/seq_len:/ { print $2 }' "$SIZE_CFG")" "${data[@]}"
cp "$RUNS/eval/results.csv" "$RESULTS/eval.csv"
cp "$RUNS/probe.tsv" "$RESULTS/probe.tsv"

arch=$(grep -m1 '^imported ' "$RUNS/import.log" | awk '{ print $2 }')
rename_rows() { sed -e 's/^pretrained-p0\t/pretrained here (p_route 0), before export\t/' \
  -e "s/^imported\t/imported $arch, no fine-tuning\t/" \
  -e "s/^finetuned-plain\t/+ $FT_STEPS steps plain fine-tuning\t/" -e "s/^finetuned-routed\t/+ $FT_STEPS steps fine-tuning with p_route 0.6\t/"; }
tok_s() { awk '/tok\/s/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^tok\/s/) v = $i } END { print v }' "$1"; }
{
  echo "# finetune-hf ($SIZE): routing added by fine-tuning an imported Hugging Face model"
  echo
  if [ "$ROUND_TRIP" = 1 ]; then
    echo "The model: pretrained here for $PRE_STEPS steps without routing, exported (\`kvroute export hf --dtype fp32\`) and"
    echo "imported back (\`kvroute import hf\`); fine-tuning starts from the exported folder (\`model.init_from=DIR\`)."
  else
    echo "The model: \`$HF_MODEL\` ($arch), imported with \`kvroute import hf\`; fine-tuning starts from the folder."
  fi
  echo "Then $FT_STEPS steps either plainly or with stochastic routing (p 0.6, scheme any), same data and budget."
  echo "Fine-tuning speed (last logged tokens/s): plain $(tok_s "$RUNS/finetuned-plain__s$seed.train.log"), routed $(tok_s "$RUNS/finetuned-routed__s$seed.train.log")."
  echo
  echo "## validation loss (nats per token, $(csv_first "$RESULTS/eval.csv" val_tokens) held-out tokens: verses + probe-format documents)"
  echo
  eval_long "$RESULTS/eval.csv" | awk -F'\t' '{ printf "%s\t%s (%.1f%%)\t%s\n", $1, $3, 100 * $4, $6 }' | rename_rows | pivot "model"
  echo
  echo "## retrieval probe: exact match ($(grep -vc '^#' "$RESULTS/probe.tsv") items, $PAIRS pairs each, greedy decoding through the shared cache)"
  echo
  eval_long "$RESULTS/eval.csv" | awk -F'\t' '{ printf "%s\t%s (%.1f%%)\t%s\n", $1, $3, 100 * $4, $7 }' | rename_rows | pivot "model"
  if [ "$ROUND_TRIP" = 1 ]; then
    echo
    eval_long "$RESULTS/eval.csv" | awk -F'\t' '$1 == "pretrained-p0" { a[$3] = $6 } $1 == "imported" { b[$3] = $6 }
      END { same = 1; for (s in a) if (a[s] != b[s]) same = 0
            print (same ? "Round trip: the imported model has exactly the loss of the pretrained one under every strategy." \
                        : "Round trip: the loss of the imported model DIFFERS from the pretrained one: a bug.") }'
  fi
} > "$RESULTS/finetune-hf.md"
finish_experiment
