#!/usr/bin/env bash
# The default corpus: the King James Bible from Debian's bible-kjv package
# (public domain, about 4 MB of text), written to data/kjv.txt. Skips steps
# whose output already exists.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
if ! command -v bible >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bible-kjv
fi
if [ ! -s data/kjv.txt ]; then
  echo "data: extracting the King James Bible to data/kjv.txt"
  # Drop the blank lines and the per-book/chapter headers' padding; keep verse text.
  bible -l100000 gen1:1-rev22:21 | sed -e 's/^ *//' -e '/^$/d' > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi
echo "data: data/kjv.txt ($(wc -c < data/kjv.txt) bytes)"
