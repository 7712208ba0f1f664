// Plain, gzip and Zstandard input files as one kind of stream (input_stream.h).
#include "input_stream.h"

#include <zlib.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kvroute/input_file.h"
#include "kvroute/input_format.h"

namespace kvroute {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

std::string compression_of(const std::string& path) {
  if (ends_with(path, ".gz")) return "gz";
  if (ends_with(path, ".zst")) return "zst";
  return "";
}

bool is_jsonl_input(const std::string& path, const InputFormat& format) {
  if (format.format == "jsonl") return true;
  if (format.format == "text") return false;
  if (format.format != "auto")
    throw std::invalid_argument("--format: '" + format.format + "' is not one of auto, text, jsonl");
  std::string name = path;
  const std::string c = compression_of(name);
  if (!c.empty()) name.resize(name.size() - c.size() - 1);
  return ends_with(name, ".jsonl") || ends_with(name, ".ndjson");
}

// A streambuf that refills from the file through the decompressor of its kind.
class InputStream::Buffer : public std::streambuf {
 public:
  explicit Buffer(const std::string& path) : path_(path), kind_(compression_of(path)), out_(1 << 16) {
    require_regular_file(path, "input '" + path + "'");  // a FIFO would block the open
    file_ = std::fopen(path.c_str(), "rb");
    if (!file_) throw std::runtime_error("input '" + path + "': cannot be opened (" + std::strerror(errno) + ")");
    if (kind_ == "gz") {
      zs_ = std::make_unique<z_stream>();
      std::memset(zs_.get(), 0, sizeof(z_stream));
      if (inflateInit2(zs_.get(), 15 + 32) != Z_OK)  // 15 + 32: gzip or zlib header, detected
        throw std::runtime_error("input '" + path + "': cannot start the gzip decoder");
      in_.resize(1 << 16);
    } else if (kind_ == "zst") {
      zd_ = ZSTD_createDStream();
      if (!zd_) throw std::runtime_error("input '" + path + "': cannot start the Zstandard decoder");
      in_.resize(ZSTD_DStreamInSize());
      out_.resize(ZSTD_DStreamOutSize());
    }
    setg(out_.data(), out_.data(), out_.data());
  }
  ~Buffer() override {
    if (zs_) inflateEnd(zs_.get());
    if (zd_) ZSTD_freeDStream(zd_);
    if (file_) std::fclose(file_);
  }
  bool compressed() const { return !kind_.empty(); }
  uint64_t consumed() const { return consumed_ - (kind_.empty() ? 0 : in_avail_left()); }

 protected:
  int_type underflow() override {
    if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
    std::size_t n = 0;
    while (n == 0 && !finished_) n = kind_.empty() ? read_plain() : kind_ == "gz" ? inflate_some() : unzstd_some();
    if (n == 0) return traits_type::eof();
    setg(out_.data(), out_.data(), out_.data() + n);
    return traits_type::to_int_type(*gptr());
  }

 private:
  std::size_t in_avail_left() const { return in_size_ - in_pos_; }

  // Refills in_ when it is used up; false at the end of the file.
  bool refill() {
    if (in_pos_ < in_size_) return true;
    in_size_ = std::fread(in_.data(), 1, in_.size(), file_);
    in_pos_ = 0;
    consumed_ += in_size_;
    if (in_size_ == 0 && std::ferror(file_)) throw std::runtime_error("input '" + path_ + "': read error");
    return in_size_ > 0;
  }

  std::size_t read_plain() {
    const std::size_t n = std::fread(out_.data(), 1, out_.size(), file_);
    consumed_ += n;
    if (n == 0) {
      if (std::ferror(file_)) throw std::runtime_error("input '" + path_ + "': read error");
      finished_ = true;
    }
    return n;
  }

  std::size_t inflate_some() {
    if (!refill()) {
      if (!stream_end_)
        throw std::runtime_error("input '" + path_ + "': the gzip stream is truncated (it ends before its end mark)");
      finished_ = true;
      return 0;
    }
    if (stream_end_) {  // concatenated gzip members (as `cat a.gz b.gz` makes) are read on
      inflateReset(zs_.get());
      stream_end_ = false;
    }
    zs_->next_in = reinterpret_cast<Bytef*>(in_.data() + in_pos_);
    zs_->avail_in = static_cast<uInt>(in_size_ - in_pos_);
    zs_->next_out = reinterpret_cast<Bytef*>(out_.data());
    zs_->avail_out = static_cast<uInt>(out_.size());
    const int rc = inflate(zs_.get(), Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
      throw std::runtime_error("input '" + path_ + "': not valid gzip data (" +
                               (zs_->msg ? std::string(zs_->msg) : "zlib error " + std::to_string(rc)) + ")");
    in_pos_ = in_size_ - zs_->avail_in;
    if (rc == Z_STREAM_END) stream_end_ = true;
    return out_.size() - zs_->avail_out;
  }

  std::size_t unzstd_some() {
    if (!refill()) {
      if (frame_open_)
        throw std::runtime_error("input '" + path_ + "': the Zstandard stream is truncated (a frame does not end)");
      finished_ = true;
      return 0;
    }
    ZSTD_inBuffer in{in_.data(), in_size_, in_pos_};
    ZSTD_outBuffer out{out_.data(), out_.size(), 0};
    const std::size_t rc = ZSTD_decompressStream(zd_, &out, &in);
    if (ZSTD_isError(rc))
      throw std::runtime_error("input '" + path_ + "': not valid Zstandard data (" + ZSTD_getErrorName(rc) + ")");
    in_pos_ = in.pos;
    frame_open_ = rc != 0;
    return out.pos;
  }

  std::string path_, kind_;
  std::FILE* file_ = nullptr;
  std::vector<char> in_, out_;
  std::size_t in_size_ = 0, in_pos_ = 0;
  uint64_t consumed_ = 0;
  bool finished_ = false, stream_end_ = false, frame_open_ = false;
  std::unique_ptr<z_stream> zs_;
  ZSTD_DStream* zd_ = nullptr;
};

InputStream::InputStream(const std::string& path) : buffer_(std::make_unique<Buffer>(path)), stream_(buffer_.get()) {}
InputStream::~InputStream() = default;
bool InputStream::compressed() const { return buffer_->compressed(); }
uint64_t InputStream::file_bytes_consumed() const { return buffer_->consumed(); }

}  // namespace kvroute
