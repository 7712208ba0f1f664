#!/usr/bin/env bash
# experiments/summarize.sh [--size small]: the paper's claims as rows of one table, from the
# experiments' results/SIZE/ files (no number typed by hand), written to experiments/results-SIZE.md.
# run_all.sh calls it at the end; it can be run alone at any time (claims whose experiment has
# no results yet say so).
#
# Effects are computed per seed (runs with the same seed share data order and initialisation,
# so differences are paired) and reported as mean ± sd over seeds. Verdict rule, everywhere:
# "inconclusive" when |mean| < 2 sd of the per-seed values (or fewer than 2 seeds), else
# "reproduced" or "not reproduced" by the claim's own test, stated in its row.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SIZE=small
parse_size_args "$@"
OUT=$EXP_ROOT/results-$SIZE.md
res() { echo "$EXP_ROOT/$1/results/$SIZE/$2"; }

# stats: stdin one number per line -> "mean<TAB>sd<TAB>n" (sd 0 for n = 1).
stats() { awk '{ s += $1; ss += $1 * $1; n++ } END { if (!n) { print "nan\tnan\t0"; exit } m = s / n; v = n > 1 ? (ss - n * m * m) / (n - 1) : 0; printf "%.6g\t%.6g\t%d\n", m, sqrt(v > 0 ? v : 0), n }'; }
# fmt_pct MEAN SD N: "+1.23% ± 0.45 (n=3)"
fmt_pct() { awk -v m="$1" -v s="$2" -v n="$3" 'BEGIN { printf "%+.2f%% ± %.2f (n=%d)", 100 * m, 100 * s, n }'; }
fmt_num() { awk -v m="$1" -v s="$2" -v n="$3" 'BEGIN { printf "%+.3f ± %.3f (n=%d)", m, s, n }'; }
# significant MEAN SD N: exit 0 when |mean| >= 2 sd and n >= 2.
significant() { awk -v m="$1" -v s="$2" -v n="$3" 'BEGIN { exit !(n >= 2 && (m < 0 ? -m : m) >= 2 * s) }'; }
# rel_change CSV LABEL STRATEGY: per seed, val_loss(STRATEGY) / val_loss(full) - 1 of run LABEL.
rel_change() {
  eval_long "$1" | awk -F'\t' -v l="$2" -v st="$3" '$1 == l && $3 == "full" { f[$2] = $6 } $1 == l && $3 == st { x[$2] = $6 }
    END { for (s in x) if (s in f) print s "\t" x[s] / f[s] - 1 }' | sort -n | cut -f2
}
# paired_rel CSV_A LABEL_A STRAT_A CSV_B LABEL_B STRAT_B: per seed, loss_A / loss_B - 1.
paired_rel() {
  { eval_long "$1" | awk -F'\t' -v l="$2" -v st="$3" '$1 == l && $3 == st { print "A\t" $2 "\t" $6 }'
    eval_long "$4" | awk -F'\t' -v l="$5" -v st="$6" '$1 == l && $3 == st { print "B\t" $2 "\t" $6 }'; } |
    awk -F'\t' '{ v[$1, $2] = $3; seeds[$2] = 1 } END { for (s in seeds) if ((("A", s) in v) && (("B", s) in v)) print v["A", s] / v["B", s] - 1 }'
}
# em CSV LABEL STRATEGY: per seed, probe exact match.
em() { eval_long "$1" | awk -F'\t' -v l="$2" -v st="$3" '$1 == l && $3 == st && $7 != "" { print $7 }'; }
row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }
missing() { row "$1" "$2" "experiment not run at this size yet ($3 missing)" "-"; }

{
  echo "# The paper's claims at the $SIZE size"
  echo
  echo "Written by \`experiments/summarize.sh --size $SIZE\` from experiments/*/results/$SIZE/ (commit"
  echo "\`$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)\`, $(date -u +%Y-%m-%d)). Effects are per-seed (paired by seed) relative changes in"
  echo "validation loss unless stated; mean ± sd over seeds. Verdict: **inconclusive** when |mean| < 2 sd"
  echo "(or one seed); otherwise **reproduced** or **not reproduced** by the test in the row."
  echo
  echo "| claim | test | measured | verdict |"
  echo "|---|---|---|---|"

  # (a), (b), (c): pretrain.
  P=$(res pretrain eval-routed.csv); S=$(res pretrain eval-shallow.csv)
  if [ -f "$P" ]; then
    for st in cla:2 cla:4; do
      read -r m s n < <(rel_change "$P" p0 $st | stats)
      if significant "$m" "$s" "$n"; then v=$(awk -v m="$m" 'BEGIN { print (m > 0 ? "reproduced" : "not reproduced") }'); else v=inconclusive; fi
      row "(a) no routing: loss rises under $st" "p_route 0, $st vs full: rise > 0" "$(fmt_pct "$m" "$s" "$n")" "$v"
    done
    for p in 0.5 0.75; do
      grep -q "/p${p}__s" "$P" || continue
      for st in cla:2 cla:4; do
        read -r m s n < <(rel_change "$P" p$p $st | stats)
        # Within 1%: the mean plus 2 sd stays under 1% (reproduced), the mean minus 2 sd is over it (not).
        v=$(awk -v m="$m" -v s="$s" -v n="$n" 'BEGIN { if (n < 2) print "inconclusive"; else if (m + 2 * s <= 0.01) print "reproduced"; else if (m - 2 * s > 0.01) print "not reproduced"; else print "inconclusive" }')
        row "(a) p_route $p stays within 1% under $st" "p_route $p, $st vs its own full: mean + 2 sd <= 1%" "$(fmt_pct "$m" "$s" "$n")" "$v"
      done
    done
    for p in 0.5 0.75; do
      grep -q "/p${p}__s" "$P" || continue
      read -r m s n < <(paired_rel "$P" p$p full "$P" p0 full | stats)
      if significant "$m" "$s" "$n"; then v=$(awk -v m="$m" 'BEGIN { print (m > 0 && m <= 0.03 ? "reproduced" : "not reproduced") }'); else v=inconclusive; fi
      row "(b) full-cache cost of routing, p_route $p (paper: +1.5% at 0.75)" "full-cache loss vs p_route 0: a cost in (0, 3%]" "$(fmt_pct "$m" "$s" "$n")" "$v"
    done
    if [ -f "$S" ]; then
      L=$(awk '/^  n_layers:/ { print $2 }' "$EXP_ROOT/common/$SIZE.yaml")
      for pair in "cla:2 $((L / 2))" "cla:3 $(((L + 2) / 3))" "cla:4 $((L / 4))"; do
        read -r st n_sh <<< "$pair"
        for p in 0.5 0.75; do
          grep -q "/p${p}__s" "$P" || continue
          read -r m s n < <(paired_rel "$P" p$p "$st" "$S" shallow${n_sh}L full | stats)
          if significant "$m" "$s" "$n"; then v=$(awk -v m="$m" 'BEGIN { print (m < 0 ? "reproduced" : "not reproduced") }'); else v=inconclusive; fi
          row "(c) ${L}-layer p_route $p under $st vs ${n_sh}-layer full cache (same KV bytes, same tokens)" "deep shared loss lower than shallow" "$(fmt_pct "$m" "$s" "$n")" "$v"
        done
      done
    fi
  else
    missing "(a)-(c) pretraining" "-" "experiments/pretrain/results/$SIZE/eval-routed.csv"
  fi

  # (d), (e): finetune (probe included).
  F=$(res finetune eval.csv)
  if [ -f "$F" ]; then
    for st in cla:2 cla:4; do
      read -r mp sp np < <(rel_change "$F" finetuned-plain $st | stats)
      read -r mr sr nr < <(rel_change "$F" finetuned-routed $st | stats)
      # paired: plain's rise minus routed's rise, per seed
      read -r m s n < <(paste <(rel_change "$F" finetuned-plain $st) <(rel_change "$F" finetuned-routed $st) | awk '{ print $1 - $2 }' | stats)
      v=$(awk -v m="$m" -v s="$s" -v n="$n" -v mr="$mr" 'BEGIN { if (n < 2 || (m < 0 ? -m : m) < 2 * s) print "inconclusive"; else print (m > 0 && mr <= 0.01 ? "reproduced" : "not reproduced") }')
      row "(d) fine-tuning with p_route 0.6 recovers tolerance of $st" "rise under $st: routed <= 1% and below plain by > 2 sd" "plain $(fmt_pct "$mp" "$sp" "$np"), routed $(fmt_pct "$mr" "$sr" "$nr"); plain - routed $(fmt_pct "$m" "$s" "$n")" "$v"
    done
    read -r m s n < <(em "$F" pretrained-p0 full | stats)
    v=$(awk -v m="$m" -v n="$n" 'BEGIN { print (n < 1 ? "inconclusive" : (m >= 0.9 ? "reproduced" : "not reproduced")) }')
    row "(e) the probe is learned with the full cache" "pretrained model, full cache: exact match >= 0.9" "$(fmt_num "$m" "$s" "$n" | sed 's/^+//')" "$v"
    for kind in plain routed; do
      cells=""
      for st in full cla:2 cla:3 cla:4; do read -r m s n < <(em "$F" finetuned-$kind $st | stats); cells+="$st $(printf '%.3f ± %.3f' "$m" "$s"); "; done
      row "(e) probe exact match under sharing, $kind fine-tune" "reported (what sharing the cache destroys)" "${cells%; }" "-"
    done
  else
    missing "(d), (e) fine-tuning and the probe" "-" "experiments/finetune/results/$SIZE/eval.csv"
  fi

  # (f): data-constrained.
  D=$(res data-constrained eval.csv)
  if [ -f "$D" ]; then
    read -r m s n < <(paired_rel "$D" routed-p0.5 full "$D" no-routing full | stats)
    if significant "$m" "$s" "$n"; then v=$(awk -v m="$m" 'BEGIN { print (m < 0 ? "reproduced" : "not reproduced") }'); else v=inconclusive; fi
    row "(f) routing as a regulariser on little data" "final full-cache loss, routed p 0.5 vs no routing: lower" "$(fmt_pct "$m" "$s" "$n")" "$v"
  else
    missing "(f) data-constrained" "-" "experiments/data-constrained/results/$SIZE/eval.csv"
  fi

  # (g): serving.
  B=$(res serving batches.tsv); LT=$(res serving lengths.tsv)
  if [ -f "$B" ] && [ -f "$LT" ]; then
    cap=$(grep -o 'memory cap [0-9]* MiB' "$(res serving serving.md)" | grep -o '[0-9]*' | head -n 1)
    first=$(grep -o "First batch at which g=1 exceeds.*" "$(res serving serving.md)" | head -n 1 || true)
    longest=$(awk -F'\t' '{ if ($1 > m) m = $1 } END { print m }' "$LT")
    measured=$(awk -F'\t' -v L="$longest" '$1 == L { kv[$2] = $4 / 1048576; pk[$2] = $5 / 1024; tt[$2] = $6; tp[$2] = $7 }
      END { printf "at %d prompt tokens, g=1 vs g=4: KV %.1f vs %.1f MiB, peak %.0f vs %.0f MiB, TTFT %.0f vs %.0f ms, decode %.1f vs %.1f tok/s", L, kv[1], kv[4], pk[1], pk[4], tt[1], tt[4], tp[1], tp[4] }' "$LT")
    row "(g) serving where the KV cache dominates" "a batch where g=1 exceeds the ${cap} MiB cap and g=4 fits (one run, no seeds)" "$measured; ${first:-no such batch in the sweep}" "$([ -n "$first" ] && echo reproduced || echo "not reproduced")"
  else
    missing "(g) serving" "-" "experiments/serving/results/$SIZE/batches.tsv"
  fi
  echo
  echo "Per-experiment tables, plots and provenance (commands, wall times, CPU): experiments/*/results/$SIZE/."
} > "$OUT"
echo "wrote $OUT"
