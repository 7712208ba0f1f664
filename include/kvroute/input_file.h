// Reading files that come from elsewhere: regular files only (a FIFO, device or directory is
// refused by name, without blocking on it), read by their size up to a limit (never "until
// EOF", which /dev/zero never reaches), and JSON parsed within kvroute's limits
// (input_limits.h). Every error starts with `what`, e.g. "tokenizer 'dir/tokenizer.json'".
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace kvroute {

// An open file descriptor of a regular file (following symlinks), opened without blocking on
// a FIFO. Throws std::runtime_error "<what>: ..." when it is missing, unreadable or not a
// regular file. The caller closes it.
int open_regular_file(const std::string& path, const std::string& what);

// The whole regular file at `path`, at most max_bytes (a larger file is refused naming the
// limit); a file that shrinks while it is read is refused as truncated.
std::string read_input_file(const std::string& path, uint64_t max_bytes, const std::string& what);

// Throws "<what>: not a regular file ..." unless `path` is a regular file (or does not exist,
// when missing_ok); for files opened by other libraries (HDF5), which would block on a FIFO.
void require_regular_file(const std::string& path, const std::string& what, bool missing_ok = false);

// JSON text parsed with nesting at most limits::kJsonDepth and no key twice in one object
// (where Hugging Face's readers keep the last, kvroute refuses: a duplicate is a damaged or
// hand-made file). Errors: "<what>: not valid JSON (...)", "<what>: nested deeper than 128
// levels", "<what>: key 'k' appears twice in one object".
nlohmann::json parse_input_json(std::string_view text, const std::string& what);

// A JSON value for an error message: its dump when short and shallow, else its type and size
// (dump() of deeply nested input would recurse once per level).
std::string json_for_message(const nlohmann::json& v);

}  // namespace kvroute
