#!/usr/bin/env bash
# The default corpus: the King James Bible from Debian's bible-kjv package
# (public domain, about 4 MB of text). Writes
#   data/kjv.txt              one verse per line; a "Book N" line starts each chapter
#   data/kjv-sp2048/          the default tokenizer: SentencePiece unigram, 2048 pieces
#   data/kjv-sp2048-shards/   token shards, one document per chapter, 1 chapter in 20 for validation
# Skips every step whose output is already there. Needs the kvroute binary
# (scripts/setup.sh builds build/kvroute; KVROUTE=path picks another).
set -euo pipefail
cd "$(dirname "$0")/.."
KVROUTE="${KVROUTE:-build/kvroute}"
TOKENIZER=data/kjv-sp2048
SHARDS=data/kjv-sp2048-shards
# A chapter heading: "Genesis 1", "1 Samuel 3", "Song of Solomon 2".
CHAPTER='^([1-3] )?[A-Z][A-Za-z ]* [0-9]+$'

mkdir -p data
if [ ! -s data/kjv.txt ]; then
  if ! command -v bible >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bible-kjv
  fi
  echo "data: extracting the King James Bible to data/kjv.txt"
  # Drop the blank lines and the per-book/chapter headers' padding; keep verse text.
  bible -l100000 gen1:1-rev22:21 | sed -e 's/^ *//' -e '/^$/d' > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi
echo "data: data/kjv.txt ($(wc -c < data/kjv.txt) bytes)"

if [ ! -x "$KVROUTE" ]; then
  echo "data: $KVROUTE not found; build it first (scripts/setup.sh), or set KVROUTE=path/to/kvroute" >&2
  exit 1
fi
if [ ! -s "$TOKENIZER/tokenizer.model" ]; then
  "$KVROUTE" data tokenizer --input data/kjv.txt --vocab-size 2048 --model-type unigram --out "$TOKENIZER" --force
fi
echo "data: tokenizer $TOKENIZER"
# Shards are re-encoded when missing or written by another tokenizer.
if [ ! -s "$SHARDS/manifest.yaml" ] || ! cmp -s "$TOKENIZER/tokenizer.model" "$SHARDS/tokenizer/tokenizer.model"; then
  "$KVROUTE" data encode --tokenizer "$TOKENIZER" --input data/kjv.txt --docs "start:$CHAPTER" \
    --val-fraction 0.05 --out "$SHARDS" --force
fi
echo "data: shards $SHARDS ($(grep -m1 '^tokens:' "$SHARDS/manifest.yaml" | sed 's/^tokens: //'))"
