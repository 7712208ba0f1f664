// Token shard files (shard.h): writing, memory-mapped reading and checks.
#include "kvroute/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace kvroute {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian; so is this code");

uint64_t fnv1a64(const void* data, std::size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {

template <class T>
void put(unsigned char* at, T v) {
  std::memcpy(at, &v, sizeof v);
}
template <class T>
T get(const unsigned char* at) {
  T v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

void encode_header(const ShardHeader& h, unsigned char out[kShardHeaderBytes]) {
  std::memset(out, 0, kShardHeaderBytes);
  std::memcpy(out, kShardMagic, 8);
  put<uint32_t>(out + 8, h.version);
  put<uint32_t>(out + 12, h.token_width);
  put<uint32_t>(out + 16, h.vocab_size);
  put<uint32_t>(out + 20, static_cast<uint32_t>(kShardHeaderBytes));
  put<uint64_t>(out + 24, h.token_count);
  put<uint64_t>(out + 32, h.checksum);
  put<uint64_t>(out + 40, h.tokenizer_fingerprint);
  put<uint64_t>(out + 48, h.documents);
}

std::string printable(const unsigned char* p, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += (p[i] >= 32 && p[i] < 127) ? static_cast<char>(p[i]) : '?';
  return s;
}

// Checks everything that does not need the token bytes; `file_bytes` is the file's size.
ShardHeader decode_header(const std::string& path, const unsigned char* p, uint64_t file_bytes) {
  const std::string name = "shard '" + path + "'";
  if (file_bytes < kShardHeaderBytes)
    throw ShardError(name + ": truncated: " + std::to_string(file_bytes) + " bytes, shorter than the " +
                     std::to_string(kShardHeaderBytes) + "-byte header");
  if (std::memcmp(p, kShardMagic, 8) != 0)
    throw ShardError(name + ": not a kvroute token shard (magic '" + printable(p, 8) + "', expected 'KVRTOKNS')");
  ShardHeader h;
  h.version = get<uint32_t>(p + 8);
  h.token_width = get<uint32_t>(p + 12);
  h.vocab_size = get<uint32_t>(p + 16);
  const uint32_t header_bytes = get<uint32_t>(p + 20);
  h.token_count = get<uint64_t>(p + 24);
  h.checksum = get<uint64_t>(p + 32);
  h.tokenizer_fingerprint = get<uint64_t>(p + 40);
  h.documents = get<uint64_t>(p + 48);
  if (h.version != kShardVersion)
    throw ShardError(name + ": format version " + std::to_string(h.version) + ", but this build reads version " +
                     std::to_string(kShardVersion) + " (re-encode it with this kvroute)");
  if (header_bytes != kShardHeaderBytes)
    throw ShardError(name + ": header size " + std::to_string(header_bytes) + ", expected " +
                     std::to_string(kShardHeaderBytes));
  if (h.token_width != 2 && h.token_width != 4)
    throw ShardError(name + ": token width " + std::to_string(h.token_width) + " bytes (must be 2 or 4)");
  if (h.vocab_size == 0) throw ShardError(name + ": vocabulary size 0");
  if (h.token_width == 2 && h.vocab_size > 65536)
    throw ShardError(name + ": vocabulary size " + std::to_string(h.vocab_size) + " does not fit 2-byte tokens");
  const uint64_t expected = kShardHeaderBytes + h.token_count * h.token_width;
  if (h.token_count > (UINT64_MAX - kShardHeaderBytes) / h.token_width || file_bytes < expected)
    throw ShardError(name + ": truncated: the header promises " + std::to_string(h.token_count) + " tokens (" +
                     std::to_string(expected) + " bytes) but the file has " + std::to_string(file_bytes) + " bytes");
  if (file_bytes > expected)
    throw ShardError(name + ": " + std::to_string(file_bytes - expected) +
                     " unexpected bytes after the last token (the header promises " + std::to_string(h.token_count) +
                     " tokens)");
  return h;
}

}  // namespace

// ---------------------------------------------------------------- writing

ShardWriter::ShardWriter(std::string path, uint32_t vocab_size, uint64_t tokenizer_fingerprint)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp") {
  if (vocab_size == 0) throw ShardError("shard '" + path_ + "': vocabulary size 0");
  header_.vocab_size = vocab_size;
  header_.token_width = token_width_for(vocab_size);
  header_.tokenizer_fingerprint = tokenizer_fingerprint;
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!file_) throw ShardError("shard '" + tmp_path_ + "': cannot create (" + std::strerror(errno) + ")");
  unsigned char placeholder[kShardHeaderBytes] = {};
  if (std::fwrite(placeholder, 1, kShardHeaderBytes, file_) != kShardHeaderBytes)
    throw ShardError("shard '" + tmp_path_ + "': write failed (" + std::strerror(errno) + ")");
}

ShardWriter::~ShardWriter() {
  if (file_) {
    std::fclose(file_);
    std::remove(tmp_path_.c_str());
  }
}

void ShardWriter::append(std::span<const int32_t> ids) {
  if (!file_) throw ShardError("shard '" + path_ + "': append after close");
  const uint32_t w = header_.token_width;
  buffer_.resize(ids.size() * w);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || static_cast<uint32_t>(id) >= header_.vocab_size)
      throw ShardError("shard '" + path_ + "': token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                       std::to_string(header_.vocab_size - 1) + ")");
    if (w == 2)
      put<uint16_t>(&buffer_[i * 2], static_cast<uint16_t>(id));
    else
      put<uint32_t>(&buffer_[i * 4], static_cast<uint32_t>(id));
  }
  header_.checksum = fnv1a64(buffer_.data(), buffer_.size(), header_.checksum);
  if (std::fwrite(buffer_.data(), 1, buffer_.size(), file_) != buffer_.size())
    throw ShardError("shard '" + tmp_path_ + "': write failed (" + std::strerror(errno) + ")");
  header_.token_count += ids.size();
}

ShardHeader ShardWriter::close() {
  if (!file_) throw ShardError("shard '" + path_ + "': closed twice");
  unsigned char header[kShardHeaderBytes];
  encode_header(header_, header);
  const bool ok = std::fseek(file_, 0, SEEK_SET) == 0 &&
                  std::fwrite(header, 1, kShardHeaderBytes, file_) == kShardHeaderBytes && std::fflush(file_) == 0 &&
                  ::fsync(::fileno(file_)) == 0;
  const int err = errno;
  std::fclose(file_);
  file_ = nullptr;
  if (!ok || std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    std::remove(tmp_path_.c_str());
    throw ShardError("shard '" + path_ + "': cannot finish writing (" + std::strerror(ok ? errno : err) + ")");
  }
  return header_;
}

ShardHeader write_shard(const std::string& path, std::span<const int32_t> ids, uint32_t vocab_size,
                        uint64_t tokenizer_fingerprint, uint64_t documents) {
  ShardWriter w(path, vocab_size, tokenizer_fingerprint);
  w.append(ids);
  for (uint64_t d = 0; d < documents; ++d) w.end_document();
  return w.close();
}

// ---------------------------------------------------------------- reading

int32_t Shard::operator[](uint64_t i) const {
  return header_.token_width == 2 ? get<uint16_t>(tokens_ + i * 2)
                                  : static_cast<int32_t>(get<uint32_t>(tokens_ + i * 4));
}

Shard Shard::open(const std::string& path, ShardCheck check) {
  // O_NONBLOCK: a FIFO named like a shard is refused below instead of blocking the open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw ShardError("shard '" + path + "': " + (err == ENOENT ? std::string("no such file") : std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw ShardError("shard '" + path + "': not a regular file");
  }
  const auto bytes = static_cast<uint64_t>(st.st_size);
  void* map = bytes ? ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0) : nullptr;
  const int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw ShardError("shard '" + path + "': cannot memory-map (" + std::strerror(map_err) + ")");
  Shard s;
  s.path_ = path;
  s.mapping_ = std::shared_ptr<const void>(map, [bytes](const void* p) {
    if (p) ::munmap(const_cast<void*>(p), bytes);
  });
  const auto* base = static_cast<const unsigned char*>(map);
  s.header_ = decode_header(path, base, bytes);
  s.tokens_ = base + kShardHeaderBytes;
  if (check == ShardCheck::full) s.verify();
  return s;
}

void Shard::verify() const {
  const uint64_t bytes = header_.token_count * header_.token_width;
  const uint64_t sum = fnv1a64(tokens_, bytes);
  if (sum != header_.checksum) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "checksum mismatch: the header says %016llx, the tokens hash to %016llx",
                  static_cast<unsigned long long>(header_.checksum), static_cast<unsigned long long>(sum));
    throw ShardError("shard '" + path_ + "': " + buf + " (the file is corrupt; re-encode it)");
  }
  for (uint64_t i = 0; i < header_.token_count; ++i) {
    const int32_t id = (*this)[i];
    if (id < 0 || static_cast<uint32_t>(id) >= header_.vocab_size)
      throw ShardError("shard '" + path_ + "': token " + std::to_string(i) + " has id " +
                       std::to_string(static_cast<uint32_t>(id)) + ", not below the vocabulary size " +
                       std::to_string(header_.vocab_size));
  }
}

ShardHeader read_shard_header(const std::string& path) { return Shard::open(path, ShardCheck::header).header(); }

}  // namespace kvroute
