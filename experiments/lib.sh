# Shared by experiments/*/run.sh (sourced, not run). Every table cell comes from a
# tool's output (results.csv / --json); this file only runs commands, records them,
# and pivots long tables into markdown.
#
#   KVROUTE_BIN   the kvroute binary (default: build/kvroute of this checkout)
#   --size smoke  minutes on a 2-core CPU, 1 seed (the default)
#   --size small  models trained to 20 tokens per non-embedding parameter on the larger
#                 corpus (scripts/data_docs.sh), 3 seeds; 1.6 h on a 2-core CPU (measured), can be run in pieces
#   --size paper  sized for GPUs (documented, not run here)
#   KVROUTE_REUSE=1  keep a finished run (model.h5) whose resolved config is the one asked for,
#                 and continue an unfinished one from its latest checkpoint (default for small;
#                 0 retrains everything)
#   KVROUTE_JOBS=N  trainings run side by side by train_async (default: small 2, else 1)
#   KVROUTE_EVAL_THREADS=N  CPU threads of each evaluation (default: every core; evaluations run
#                 alone, after the trainings, which at the small size take one thread each)
#   KVROUTE_SEEDS="1 2 3"  the training seeds (default: smoke 1, small and paper 1 2 3)
#   KVROUTE_TRAIN_ARGS="--set k=v ..."  appended to every training command
set -euo pipefail

EXP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$EXP_ROOT/.." && pwd)
KVROUTE_BIN=${KVROUTE_BIN:-$REPO/build/kvroute}
SIZE=smoke

parse_size_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --size) [ $# -ge 2 ] || { echo "error: --size needs smoke, small or paper" >&2; exit 2; }; SIZE=$2; shift 2 ;;
      --size=*) SIZE=${1#--size=}; shift ;;
      -h|--help) echo "usage: $0 [--size smoke|small|paper]   (KVROUTE_BIN=path/to/kvroute)"; exit 0 ;;
      *) echo "error: unknown argument '$1' (expected --size smoke|small|paper)" >&2; exit 2 ;;
    esac
  done
  case "$SIZE" in smoke|small|paper) ;; *) echo "error: --size must be smoke, small or paper (got '$SIZE')" >&2; exit 2 ;; esac
  REUSE=${KVROUTE_REUSE:-$([ "$SIZE" = small ] && echo 1 || echo 0)}
  JOBS=${KVROUTE_JOBS:-$([ "$SIZE" = small ] && echo 2 || echo 1)}
  case "$JOBS" in ''|*[!0-9]*|0) echo "error: KVROUTE_JOBS must be a positive number (got '$JOBS')" >&2; exit 2 ;; esac
  EVAL_THREADS=${KVROUTE_EVAL_THREADS:-$(nproc)}
  case "$EVAL_THREADS" in ''|*[!0-9]*|0) echo "error: KVROUTE_EVAL_THREADS must be a positive number (got '$EVAL_THREADS')" >&2; exit 2 ;; esac
}

# init_experiment NAME "$@": parse arguments, set EXP_DIR, RUNS, RESULTS, PROV, start provenance.
init_experiment() {
  EXP_NAME=$1; shift
  parse_size_args "$@"
  [ -x "$KVROUTE_BIN" ] || { echo "error: kvroute binary '$KVROUTE_BIN' not found or not executable (build it, or set KVROUTE_BIN=...)" >&2; exit 2; }
  KVROUTE_BIN=$(cd "$(dirname "$KVROUTE_BIN")" && pwd)/$(basename "$KVROUTE_BIN")
  EXP_DIR=$EXP_ROOT/$EXP_NAME
  RUNS=$EXP_DIR/runs/$SIZE
  RESULTS=$EXP_DIR/results/$SIZE
  PROV=$RESULTS/provenance.md
  SIZE_CFG=$EXP_ROOT/common/$SIZE.yaml
  BASE_CFG=$EXP_ROOT/common/base.yaml
  cd "$REPO"
  [ -d data/kjv-sp2048-shards ] || { echo "error: data/kjv-sp2048-shards missing: run scripts/data.sh first" >&2; exit 2; }
  # The small size trains on the larger corpus; its script skips every step already done.
  if [ "$SIZE" = small ] && [ ! -s data/docs-sp2048-shards/manifest.yaml ]; then
    KVROUTE=$KVROUTE_BIN "$REPO/scripts/data_docs.sh" 2048 || { echo "error: scripts/data_docs.sh failed" >&2; exit 2; }
  fi
  mkdir -p "$RUNS" "$RESULTS"
  EXP_T0=$(date +%s)
  local commit dirty
  commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | wc -l || true)
  {
    echo "# provenance: $EXP_NAME ($SIZE)"
    echo
    echo "- git commit: \`$commit\`$([ "$dirty" != 0 ] && echo " (working tree had $dirty modified tracked files)")"
    echo "- started: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- CPU: $(cpu_description)"
    echo "- data: $(data_description)"
    echo "- binary: \`$KVROUTE_BIN\`"
    echo "- seeds: $(seeds_for_size | tr '\n' ' ' | sed 's/ $//')"
    echo "- regenerate: \`$([ -n "${KVROUTE_SEEDS:-}" ] && echo "KVROUTE_SEEDS=\"$KVROUTE_SEEDS\" ")experiments/$EXP_NAME/run.sh --size $SIZE\` (from the repository root)"
    echo
    echo "## commands (run from the repository root; wall time of each)"
    echo
  } > "$PROV"
}

# cpu_description: lscpu's model name and the matrix/vector flags that decide kvroute's speed.
cpu_description() {
  local model flags
  model=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)
  flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile' | tr '\n' ' ' || true)
  echo "${model:-unknown}; flags: ${flags:-none of avx2/avx512f/avx512_bf16/amx}"
}

# data_description: which token shards the experiment trains on, so that two result sets can be
# told apart by their data: the tokenizer's identity, the token counts, a checksum of the manifest
# (it lists every shard's checksum) and, for the larger corpus, the Debian packages the text came
# from (their versions change the text: linux-doc follows the kernel).
data_description() {
  local dir=data/kjv-sp2048-shards sources=""
  [ "$SIZE" = smoke ] || dir=data/docs-sp2048-shards
  [ -s "$dir/manifest.yaml" ] || { echo "\`$dir\` (no manifest)"; return; }
  local identity tokens sum
  identity=$(sed -n 's/^ *identity: *//p' "$dir/manifest.yaml" | head -n 1)
  tokens=$(sed -n 's/^tokens: *//p' "$dir/manifest.yaml" | head -n 1)
  sum=$(md5sum "$dir/manifest.yaml" | cut -c1-12)
  if [ "$SIZE" != smoke ]; then
    if [ -s data/docs/SOURCES ]; then sources=$(paste -sd, data/docs/SOURCES | sed 's/,/, /g')
    else sources="$( (dpkg-query -W -f='${Package} ${Version}, ' linux-doc python3-doc perl-doc 2>/dev/null || true) | sed 's/, $//') (installed now; data/docs/SOURCES missing)"; fi
    sources="; text from ${sources}"
  fi
  echo "\`$dir\`: tokenizer ${identity:-unknown}, tokens $tokens, manifest md5 $sum$sources"
}

# run LOG CMD...: runs CMD (output to LOG), records it and its wall time in the provenance.
run() {
  local log=$1; shift
  local t0 t1 rc=0 q
  q=$(printf '%q ' "$@"); q=${q% }
  q=${q//$REPO\//}
  echo "+ $q" >&2
  t0=$(date +%s.%N)
  "$@" > "$log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  printf -- '- `%s` (%.1f s%s)\n' "$q" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" "$([ $rc = 0 ] || echo ", FAILED with exit $rc")" >> "$PROV"
  if [ $rc != 0 ]; then
    echo "error: command failed (exit $rc); last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit $rc
  fi
}

# train_run DIR CONFIG... [--set k=v ...]: trains into DIR. With REUSE=1 (KVROUTE_REUSE), a
# finished run whose resolved config (DIR.config.yaml, written before training) equals the one
# asked for is kept, and an unfinished one continues from its latest checkpoint; anything else
# is removed and trained anew.
train_run() {
  local dir=$1; shift
  local extra=() want q
  read -ra extra <<< "${KVROUTE_TRAIN_ARGS:-}"
  local args=("$@" "${extra[@]}" --set "train.out_dir=$dir")
  want=$("$KVROUTE_BIN" train "${args[@]}" --dump-config) || { echo "error: config of $dir does not resolve" >&2; exit 2; }
  if [ "$REUSE" = 1 ] && [ -f "$dir.config.yaml" ] && [ "$want" = "$(cat "$dir.config.yaml")" ]; then
    q=$(printf '%q ' "$KVROUTE_BIN" train "${args[@]}"); q=${q% }; q=${q//$REPO\//}
    if [ -f "$dir/model.h5" ]; then
      echo "- kept \`${dir#$REPO/}/model.h5\` (same config), trained earlier by \`$q\`; its log's last line: \`$(grep -h "^final" "$dir/train.log" 2>/dev/null | tail -n 1)\`" >> "$PROV"
      return
    fi
    if compgen -G "$dir/checkpoints/step_*.h5" > /dev/null; then
      echo "- continuing \`${dir#$REPO/}\` from its latest checkpoint (started by \`$q\`)" >> "$PROV"
      run "$dir.resume.log" "$KVROUTE_BIN" train --resume "$dir"
      return
    fi
  fi
  rm -rf "$dir" "$dir.config.yaml"
  mkdir -p "$(dirname "$dir")"
  printf '%s\n' "$want" > "$dir.config.yaml"
  run "$dir.train.log" "$KVROUTE_BIN" train "${args[@]}"
}

# train_async ARGS...: train_run ARGS in the background, at most JOBS at a time (the oldest is
# waited for first); train_wait waits for all of them and stops the experiment if one failed.
# Each run has its own log; the provenance lines of runs side by side interleave.
ASYNC_PIDS=()
train_async() {
  if [ "$JOBS" -le 1 ]; then train_run "$@"; return; fi
  while [ ${#ASYNC_PIDS[@]} -ge "$JOBS" ]; do
    wait "${ASYNC_PIDS[0]}" || { echo "error: a training run failed (see the lines above)" >&2; train_wait; exit 1; }
    ASYNC_PIDS=("${ASYNC_PIDS[@]:1}")
  done
  ( train_run "$@" ) &
  ASYNC_PIDS+=($!)
}
train_wait() {
  local pid rc=0
  for pid in "${ASYNC_PIDS[@]}"; do wait "$pid" || rc=1; done
  ASYNC_PIDS=()
  [ $rc = 0 ] || { echo "error: a training run failed (see the lines above)" >&2; exit 1; }
}

# routed_p05_run SEED: the run directory of the p 0.5 routed model (scheme any, per batch) that
# ablation and strategy-sweep evaluate. At the small size it is pretrain's p0.5 run (the same
# resolved config, so train_run keeps it when pretrain has trained it): one model, not three.
routed_p05_run() {
  if [ "$SIZE" = small ]; then echo "$EXP_ROOT/pretrain/runs/$SIZE/p0.5__s$1"; else echo "$RUNS/routed-p0.5__s$1"; fi
}

# seeds_for_size: the seeds this size runs (smoke: 1 seed; paper: 3; KVROUTE_SEEDS="1 2 3" overrides).
seeds_for_size() { if [ -n "${KVROUTE_SEEDS:-}" ]; then echo "$KVROUTE_SEEDS"; elif [ "$SIZE" = smoke ]; then echo 1; else echo "1 2 3"; fi; }

# label_of PATH: run directories are named LABEL__sSEED; prints LABEL (PATH may be .../LABEL__sSEED/model.h5).
label_of() { local d; d=$(basename "$(dirname "$1")"); echo "${d%__s*}"; }

# csv_to_tsv FILE...: RFC 4180 CSV (quoted fields may hold commas) -> tab-separated lines.
csv_to_tsv() {
  awk '{ out = ""; q = 0; n = length($0)
         for (i = 1; i <= n; i++) { c = substr($0, i, 1)
           if (q) { if (c == "\"") { if (substr($0, i + 1, 1) == "\"") { out = out "\""; i++ } else q = 0 } else out = out c }
           else if (c == "\"") q = 1; else if (c == ",") out = out "\t"; else out = out c }
         print out }' "$@"
}

# eval_long CSV...: from eval results.csv files, prints TSV: label seed strategy kv_fraction
# kv_bytes_per_token val_loss probe_exact_match (empty without --probe)
eval_long() {
  local f
  for f in "$@"; do csv_to_tsv "$f"; done | awk -F'\t' '$1 == "checkpoint" { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { n = split($col["checkpoint"], parts, "/"); d = parts[n - 1]; seed = d; sub(/.*__s/, "", seed); sub(/__s[0-9]+$/, "", d)
      em = ("probe_exact_match" in col) ? $col["probe_exact_match"] : ""
      printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d, seed, $col["strategy"], $col["kv_fraction"], $col["kv_bytes_per_token"], $col["val_loss"], em }'
}

# pivot ROWHEADER: stdin TSV "row<TAB>column<TAB>value" (several values per cell = seeds) ->
# markdown table in first-seen row and column order; a cell is the mean, "± sd (n)" when n > 1.
pivot() {
  awk -F'\t' -v rowhead="$1" -v digits="${2:-3}" '
    { if (!($1 in rs)) { rs[$1] = 1; rows[++nr] = $1 } if (!($2 in cs)) { cs[$2] = 1; cols[++nc] = $2 }
      k = $1 SUBSEP $2; n[k]++; s[k] += $3; ss[k] += $3 * $3 }
    END {
      printf "| %s |", rowhead; for (j = 1; j <= nc; j++) printf " %s |", cols[j]; printf "\n|---|"
      for (j = 1; j <= nc; j++) printf "---:|"; printf "\n"
      for (i = 1; i <= nr; i++) {
        printf "| %s |", rows[i]
        for (j = 1; j <= nc; j++) {
          k = rows[i] SUBSEP cols[j]
          if (!(k in n)) { printf " - |"; continue }
          m = s[k] / n[k]; fmt = "%." digits "f"
          if (n[k] > 1) { v = (ss[k] - n[k] * m * m) / (n[k] - 1); if (v < 0) v = 0
            printf " " fmt " ± " fmt " (n=%d) |", m, sqrt(v), n[k] } else printf " " fmt " |", m
        }
        printf "\n"
      }
    }'
}

# finish_experiment: wall time into the provenance.
finish_experiment() {
  local t1; t1=$(date +%s)
  {
    echo
    echo "- finished: $(date -u +%Y-%m-%dT%H:%M:%SZ); wall time $((t1 - EXP_T0)) s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  } >> "$PROV"
  echo "wrote $RESULTS"
}

# plot_lines PNG TITLE XLABEL YLABEL DAT [LOGX]: one line per block of DAT (blocks separated by two
# blank lines; a block's first line is its title in double quotes, then "x y" rows).
plot_lines() {
  local png=$1 title=$2 xlabel=$3 ylabel=$4 dat=$5 logx=${6:-}
  local blocks; blocks=$(grep -c '^"' "$dat")
  command -v gnuplot > /dev/null || { echo "note: gnuplot not found; no plot $png" >&2; return 0; }
  gnuplot <<GP
set terminal pngcairo size 900,600 noenhanced
set output '$png'
set title '$title'
set xlabel '$xlabel'
set ylabel '$ylabel'
set grid
set key outside below
$([ -n "$logx" ] && echo "set logscale x 2")
plot for [i=0:$((blocks - 1))] '$dat' index i using 1:2 with linespoints lw 2 pt 7 title columnheader(1)
GP
}

# eval_run OUTDIR CKPT... -- EVAL-ARGS...: kvroute eval into OUTDIR. With REUSE=1 its earlier
# results are kept when the command is the same (OUTDIR.cmd) and newer than every checkpoint.
eval_run() {
  local out=$1; shift
  local ckpts=() c fresh=1 cmd
  while [ $# -gt 0 ] && [ "$1" != -- ]; do ckpts+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  cmd=$(printf '%q ' "$KVROUTE_BIN" eval "${ckpts[@]}" "$@" --threads "$EVAL_THREADS" --out "$out")
  if [ "$REUSE" = 1 ] && [ -f "$out/results.csv" ] && [ "$cmd" = "$(cat "$out.cmd" 2>/dev/null)" ]; then
    for c in "${ckpts[@]}"; do [ "$c" -nt "$out/results.csv" ] && fresh=0; done
    if [ $fresh = 1 ]; then echo "- kept \`${out#$REPO/}/results.csv\` (same command, newer than every checkpoint it evaluates)" >> "$PROV"; return; fi
  fi
  rm -rf "$out" "$out.cmd"
  run "$out.log" "$KVROUTE_BIN" eval "${ckpts[@]}" "$@" --threads "$EVAL_THREADS" --out "$out"
  printf '%s' "$cmd" > "$out.cmd"
}

# csv_first CSV COLUMN: the named column of the first data row.
csv_first() { csv_to_tsv "$1" | awk -F'\t' -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next } { print (k ? $k : ""); exit }'; }
