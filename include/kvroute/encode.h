// `kvroute data encode`: text files -> token shards (shard.h) in a shard
// directory (shard_dir.h), split into train and validation by document.
//
// Documents (--docs):
//   blank     a document is a run of non-blank lines; one or more blank (empty or
//             whitespace-only) lines end it. The blank lines themselves are dropped.
//   line      every non-blank line is a document.
//   file      every input file is one document (blank lines kept).
//   start:RE  a line in which the POSIX extended regular expression RE matches starts a
//             new document; lines before the first match form one too; blank lines
//             are kept. E.g. the default corpus, one document per Bible chapter
//             ("Genesis 1", "1 Samuel 3"): start:^([1-3] )?[A-Z][A-Za-z ]* [0-9]+$
//   JSON Lines (a file named *.jsonl / *.ndjson, or --format jsonl): every record's text
//             (--text-key, default "text") is a document, whatever --docs says.
// Files named *.gz or *.zst are decompressed as they are read (gzip: zlib; Zstandard: libzstd).
// No document spans two files. Each document's tokens are followed by the
// tokenizer's document separator (</s>, or a newline byte for "byte").
//
// Encoding runs in parallel (OpenMP) over line-aligned chunks of up to 1 MiB;
// encode() of a text equals the concatenation over its lines, so the shards are
// identical for any thread count. The output is written into DIR.partial and
// renamed to DIR at the end, so DIR only ever exists complete.
#pragma once

#include "kvroute/input_format.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kvroute {

struct DocumentRule {
  enum class Kind { blank, line, file, start };
  Kind kind = Kind::blank;
  std::string pattern;  // start: the regular expression
};
// "blank" | "line" | "file" | "start:RE"; throws std::invalid_argument otherwise
// (also for a malformed regular expression).
DocumentRule parse_document_rule(const std::string& spec);
std::string to_string(const DocumentRule& rule);

struct EncodeOptions {
  std::string tokenizer = "byte";   // "byte" or a tokenizer directory
  std::vector<std::string> inputs;  // text files
  std::string out_dir;
  DocumentRule documents;             // default: blank (text files; a JSON Lines record is a document)
  InputFormat format;                 // text or JSON Lines, by name or forced (input_format.h)
  double val_fraction = 0.05;         // in [0, 0.5]; 0 = no validation shards
  uint64_t shard_tokens = 100000000;  // a shard is closed after the document that reaches this
  int threads = 0;                    // 0 = all cores
  bool force = false;                 // replace an existing out_dir
};

struct EncodeReport {
  uint64_t input_bytes = 0;
  uint64_t documents[2] = {0, 0};  // train, val
  uint64_t tokens[2] = {0, 0};     // train, val (separators included)
  int shards[2] = {0, 0};
  uint64_t bad_records_skipped = 0;  // JSON Lines records passed over (InputFormat::skip_bad_records)
  double seconds = 0;
};

// Throws std::runtime_error naming the file or option: missing, unreadable or empty
// input, out_dir exists (without force), no document selected for validation.
EncodeReport encode_corpus(const EncodeOptions& options);

}  // namespace kvroute
