// An input file as a stream of its bytes, decompressed by its name: plain, .gz (zlib's gzip
// reader) or .zst (libzstd's streaming decoder). Bytes come a buffer at a time, so memory
// does not grow with the file.
#pragma once

#include <cstdint>
#include <istream>
#include <memory>
#include <streambuf>
#include <string>

namespace kvroute {

class InputStream {
 public:
  // Throws std::runtime_error "input '<path>': ..." when the file cannot be opened.
  explicit InputStream(const std::string& path);
  ~InputStream();
  InputStream(const InputStream&) = delete;
  InputStream& operator=(const InputStream&) = delete;

  std::istream& stream() { return stream_; }
  bool compressed() const;
  // Bytes of the file consumed so far (compressed bytes for a compressed file).
  uint64_t file_bytes_consumed() const;

  class Buffer;

 private:
  std::unique_ptr<Buffer> buffer_;
  std::istream stream_;
};

// "gz", "zst" or "" by the file name.
std::string compression_of(const std::string& path);

}  // namespace kvroute
