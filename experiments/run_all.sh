#!/usr/bin/env bash
# Runs every experiment in turn: experiments/run_all.sh [--size smoke|small|paper] [NAME...]
# (default: all, most important first). KVROUTE_BIN=path/to/kvroute picks the binary.
# Each writes experiments/NAME/results/SIZE/ (table, plot, provenance.md); then summarize.sh
# writes the claims table experiments/results-SIZE.md. --size small continues an interrupted
# suite where it stopped (finished runs kept, unfinished ones resumed from their checkpoints).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
size_args=(); names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --size) [ $# -ge 2 ] || { echo "error: --size needs smoke, small or paper" >&2; exit 2; }; size_args=(--size "$2"); shift 2 ;;
    --size=*) size_args=("$1"); shift ;;
    -h|--help) echo "usage: $0 [--size smoke|small|paper] [pretrain ablation serving strategy-sweep finetune finetune-hf data-constrained]"; exit 0 ;;
    -*) echo "error: unknown option '$1'" >&2; exit 2 ;;
    *) [ -x "$here/$1/run.sh" ] || { echo "error: no experiment '$1' (experiments/$1/run.sh)" >&2; exit 2; }; names+=("$1"); shift ;;
  esac
done
case "${size_args[*]:-}" in ""|"--size smoke"|"--size small"|"--size paper"|--size=smoke|--size=small|--size=paper) ;; *) echo "error: --size must be smoke, small or paper (got '${size_args[*]}')" >&2; exit 2 ;; esac
if [ ${#names[@]} = 0 ]; then
  names=(pretrain ablation serving strategy-sweep finetune finetune-hf data-constrained)
  # small: the claims' six experiments (finetune-hf has no small size); pretrain first, since
  # ablation and strategy-sweep evaluate its p 0.5 models.
  case "${size_args[*]:-}" in *small*) names=(pretrain finetune serving data-constrained ablation strategy-sweep) ;; esac
fi
failed=()
for n in "${names[@]}"; do
  echo "=== $n $(date -u +%H:%M:%S)"
  t0=$(date +%s)
  if "$here/$n/run.sh" "${size_args[@]}"; then echo "=== $n done in $(($(date +%s) - t0)) s"
  else echo "=== $n FAILED after $(($(date +%s) - t0)) s" >&2; failed+=("$n"); fi
done
# The claims table from whatever results/SIZE/ now holds (experiments/results-SIZE.md).
"$here/summarize.sh" "${size_args[@]}" || failed+=(summarize)
[ ${#failed[@]} = 0 ] || { echo "failed: ${failed[*]}" >&2; exit 1; }
