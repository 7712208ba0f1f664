#!/usr/bin/env bash
# The main job: set up, fetch the default corpus, train a small model with
# stochastic KV routing, then compare KV-sharing strategies on it. Arguments go to
# `kvroute train` (--force replaces an earlier runs/tiny).
set -euo pipefail
cd "$(dirname "$0")/.."
KVROUTE_TARGETS=kvroute scripts/setup.sh
scripts/data.sh
# A second quickstart keeps the first run: it evaluates a finished one again and continues an
# interrupted one. Arguments (e.g. --force to start over, --set overrides) always train anew.
if [ $# -eq 0 ] && [ -s runs/tiny/model.h5 ]; then
  echo "quickstart: runs/tiny already holds a trained model; evaluating it (scripts/quickstart.sh --force trains a new one)"
elif [ $# -eq 0 ] && [ -e runs/tiny/checkpoints/latest ]; then
  echo "quickstart: continuing the interrupted run in runs/tiny"
  build/kvroute train --resume runs/tiny
else
  build/kvroute train configs/tiny.yaml "$@"
fi
build/kvroute eval runs/tiny/model.h5 --strategies full,cla:2,cla:3,half,keep:2,first
