#!/usr/bin/env bash
# Sets everything up, builds, and runs the test suite (ctest). Extra arguments go to ctest,
# e.g. scripts/test.sh -L unit  or  scripts/test.sh -R Attention
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 900 "$@"
