// The texts of a JSON Lines file: one JSON object a line, its text under a key (InputFormat).
// A record is held whole (memory bounded by the largest record, up to kJsonlRecordBytes),
// the file never.
#pragma once

#include <cstdint>
#include <istream>
#include <string>

#include "kvroute/input_format.h"

namespace kvroute {

class JsonlRecords {
 public:
  JsonlRecords(std::istream& in, std::string path, const InputFormat& format)
      : in_(in), path_(std::move(path)), format_(format) {}
  // The text of the next record (blank lines are no records); false at the end of the file.
  // A bad record throws std::runtime_error "input '<path>' line N: <why>", or is counted in
  // skipped() and passed over under skip_bad_records.
  bool next(std::string& text);
  uint64_t line() const { return line_; }
  uint64_t skipped() const { return skipped_; }
  uint64_t bytes() const { return bytes_; }  // bytes of the file read so far (decompressed)

 private:
  std::istream& in_;
  std::string path_;
  const InputFormat& format_;
  std::string record_;
  uint64_t line_ = 0, skipped_ = 0, bytes_ = 0;
};

}  // namespace kvroute
