// How `kvroute data tokenizer` and `kvroute data encode` read their input files.
#pragma once

#include <string>

namespace kvroute {

struct InputFormat {
  // "auto": JSON Lines for names ending .jsonl or .ndjson (before an optional .gz / .zst),
  // plain text otherwise; "text" or "jsonl" for every file. Any file may be compressed:
  // .gz (gzip, zlib) or .zst (Zstandard, libzstd), by its name.
  std::string format = "auto";
  // JSON Lines: the key of each record's text (one record, one document).
  std::string text_key = "text";
  // JSON Lines: a bad record (not JSON, not an object, no string under text_key) is skipped
  // and counted instead of ending the run with its file and line number.
  bool skip_bad_records = false;
};

// Whether `path` is read as JSON Lines under `format` (throws for an unknown format name).
bool is_jsonl_input(const std::string& path, const InputFormat& format);

}  // namespace kvroute
