#!/usr/bin/env bash
# The larger corpus (README "A larger corpus"): about 41 MB of English technical prose from
# Debian's documentation packages (the kernel's reST documentation, the Python manual's reST
# sources, Perl's POD), markup stripped by sed, one document per file. Writes
#   data/docs/{linux,python,perl}/N.txt   the text, one file per source document
#   data/docs-sp$VOCAB/                   SentencePiece unigram tokenizer (default 2048 pieces)
#   data/docs-sp$VOCAB-shards/            token shards, one document per file, 1 in 20 for validation
# Usage: scripts/data_docs.sh [VOCAB]. Skips every step whose output is already there.
# The tokenizer is fitted on a sample of MAX_SENTENCES lines (default 300000; all 1.6M lines
# took 16 min to fit on a 2-core machine). Needs the kvroute binary (KVROUTE=path picks another).
set -euo pipefail
cd "$(dirname "$0")/.."
KVROUTE="${KVROUTE:-build/kvroute}"
VOCAB="${1:-2048}"
MAX_SENTENCES="${MAX_SENTENCES:-300000}"
DOC_PACKAGES=(linux-doc python3-doc perl-doc)
# The corpus and the tokenizer must come out the same on every machine: file order by byte
# value whatever the locale, and a fixed thread count for the fit (SentencePiece's unigram fit
# depends on how many threads split its sums; 2 gives the tokenizer every committed result used).
export LC_ALL=C
FIT_THREADS="${FIT_THREADS:-2}"
TOKENIZER=data/docs-sp$VOCAB
SHARDS=data/docs-sp$VOCAB-shards
case "$VOCAB" in ''|*[!0-9]*) echo "error: VOCAB must be a number of pieces (got '$VOCAB')" >&2; exit 2 ;; esac

# The documentation packages' folders carry version numbers; find them rather than name them.
first_dir() { local d; for d in "$@"; do [ -d "$d" ] && { echo "$d"; return 0; }; done; return 1; }
sources() {
  LINUX=$(first_dir /usr/share/doc/linux-doc-*/Documentation /usr/share/doc/linux-doc/Documentation) &&
  PYTHON=$(first_dir /usr/share/doc/python3.*-doc/html/_sources /usr/share/doc/python3-doc/html/_sources) &&
  PERL=$(first_dir /usr/share/perl/5.*/pod)
}
if [ ! -f data/docs/.complete ]; then
  if ! sources; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${DOC_PACKAGES[@]}"
    sources || { echo "error: documentation folders not found after installing ${DOC_PACKAGES[*]}" >&2; exit 1; }
  fi
  echo "data_docs: extracting text from $LINUX, $PYTHON, $PERL"
  rm -rf data/docs.tmp
  mkdir -p data/docs.tmp/linux data/docs.tmp/python data/docs.tmp/perl
  # reST: drop directives, field lists and underline rows; keep the text of roles, literals, links, bold.
  rst='/^\.\. /d; /^ *:[a-z-]+:( |$)/d; /^([=~^"*#+-])\1{2,}$/d; s/:[a-z:+-]+:`([^`<]*[^ `<])( *<[^>]*>)?`/\1/g; s/``([^`]*)``/\1/g; s/`([^`<]*[^ `<])( *<[^>]*>)?`_{0,2}/\1/g; s/\*\*([^*]+)\*\*/\1/g'
  # POD: drop commands, keep headings' and items' text and the text inside formatting codes.
  pod='/^=(pod|cut|begin|end|for|encoding|over|back)/d; s/^=(head[1-4]|item) *//; s/[BICFSLEXZ]<([^<>]*)>/\1/g; s/[BICFSLEXZ]<([^<>]*)>/\1/g'
  n=0; while IFS= read -r f; do n=$((n + 1)); zcat "$f" | sed -E "$rst" > "data/docs.tmp/linux/$n.txt"; done < <(find "$LINUX" -name '*.rst.gz' | sort)
  n=0; while IFS= read -r f; do n=$((n + 1)); sed -E "$rst" "$f" > "data/docs.tmp/python/$n.txt"; done < <(find "$PYTHON" -name '*.rst.txt' | sort)
  n=0; while IFS= read -r f; do n=$((n + 1)); sed -E "$pod" "$f" > "data/docs.tmp/perl/$n.txt"; done < <(find "$PERL" -name '*.pod' | sort)
  find data/docs.tmp -type f -empty -delete
  # The text depends on the packages' versions (Debian updates linux-doc with every kernel update).
  dpkg-query -W -f='${Package} ${Version}\n' "${DOC_PACKAGES[@]}" > data/docs.tmp/SOURCES 2>/dev/null || true
  touch data/docs.tmp/.complete
  rm -rf data/docs && mv data/docs.tmp data/docs
fi
# Thousands of files: named in a list file, not on command lines (kvroute's --input-list).
input_list=$(mktemp)
trap 'rm -f "$input_list"' EXIT
find data/docs -name '*.txt' | sort -V > "$input_list"
echo "data_docs: data/docs ($(wc -l < "$input_list") files, $(xargs cat < "$input_list" | wc -c) bytes)"

[ -x "$KVROUTE" ] || { echo "data_docs: $KVROUTE not found; build it first (scripts/setup.sh), or set KVROUTE=path/to/kvroute" >&2; exit 1; }
if [ ! -s "$TOKENIZER/tokenizer.model" ]; then
  "$KVROUTE" data tokenizer --input-list "$input_list" --vocab-size "$VOCAB" --model-type unigram \
    --max-sentences "$MAX_SENTENCES" --threads "$FIT_THREADS" --out "$TOKENIZER" --force
fi
echo "data_docs: tokenizer $TOKENIZER"
if [ ! -s "$SHARDS/manifest.yaml" ] || ! cmp -s "$TOKENIZER/tokenizer.model" "$SHARDS/tokenizer/tokenizer.model"; then
  "$KVROUTE" data encode --tokenizer "$TOKENIZER" --input-list "$input_list" --docs file --val-fraction 0.05 \
    --out "$SHARDS" --force
fi
echo "data_docs: shards $SHARDS ($(grep -m1 '^tokens:' "$SHARDS/manifest.yaml" | sed 's/^tokens: //'))"
