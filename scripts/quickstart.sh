#!/usr/bin/env bash
# The main job: set up, fetch the default corpus, train a small model with
# stochastic KV routing, then compare KV-sharing strategies on it. Arguments go to
# `kvroute train`: a second run needs --force (runs/tiny already holds the first).
set -euo pipefail
cd "$(dirname "$0")/.."
KVROUTE_TARGETS=kvroute scripts/setup.sh
scripts/data.sh
build/kvroute train configs/tiny.yaml "$@"
build/kvroute eval runs/tiny/model.h5 --strategies full,cla:2,cla:3,half,keep:2,first
