// Token shards: the on-disk form of a tokenized corpus, written by
// `kvroute data encode` and memory-mapped by the data loader.
//
// A shard is a 64-byte header followed by the tokens, all little-endian:
//
//   offset  size  field
//        0     8  magic "KVRTOKNS"
//        8     4  format version, uint32 (this build writes and reads 1)
//       12     4  token width in bytes, uint32: 2 (uint16) when vocab_size <= 65536, else 4 (uint32)
//       16     4  vocabulary size, uint32; every token id is < vocab_size
//       20     4  header size in bytes, uint32 (64)
//       24     8  token count, uint64
//       32     8  checksum, uint64: FNV-1a 64 of the token bytes exactly as stored (offset 64 to the end)
//       40     8  tokenizer fingerprint, uint64 (Tokenizer::fingerprint() of the tokenizer that wrote it)
//       48     8  documents that end in this shard, uint64 (each is followed by the tokenizer's
//                 document separator, so the token stream ends with a separator)
//       56     8  reserved, zero
//       64     -  token count * width bytes of token ids
//
// FNV-1a 64: h = 0xcbf29ce484222325; for each byte b: h = (h ^ b) * 0x100000001b3 (mod 2^64).
// The file size must be exactly 64 + count * width. Shards are written to "<path>.tmp"
// and renamed into place when complete, so a shard that exists is whole.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvroute {

inline constexpr char kShardMagic[8] = {'K', 'V', 'R', 'T', 'O', 'K', 'N', 'S'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr std::size_t kShardHeaderBytes = 64;

inline constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
// FNV-1a 64 of a byte range, continuing from `h` (so a stream can be hashed in pieces).
uint64_t fnv1a64(const void* data, std::size_t bytes, uint64_t h = kFnvOffset);

// 2 when every id of the vocabulary fits in uint16, else 4.
inline uint32_t token_width_for(uint32_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t token_width = 2;
  uint32_t vocab_size = 0;
  uint64_t token_count = 0;
  uint64_t checksum = kFnvOffset;
  uint64_t tokenizer_fingerprint = 0;
  uint64_t documents = 0;
};

// Every problem with a shard file: the message names the file and what is wrong.
class ShardError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Appends tokens to "<path>.tmp"; close() writes the header and renames the file to
// <path>. Ids >= vocab_size are refused. Destroying an unclosed writer removes the
// temporary, so an interrupted encode leaves no shard behind.
class ShardWriter {
 public:
  ShardWriter(std::string path, uint32_t vocab_size, uint64_t tokenizer_fingerprint);
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  ~ShardWriter();
  void append(std::span<const int32_t> ids);
  void end_document() { ++header_.documents; }
  uint64_t token_count() const { return header_.token_count; }
  const std::string& path() const { return path_; }
  ShardHeader close();

 private:
  std::string path_, tmp_path_;
  ShardHeader header_;
  std::FILE* file_ = nullptr;
  std::vector<unsigned char> buffer_;
};

// Writes a whole shard at once (tests, small corpora).
ShardHeader write_shard(const std::string& path, std::span<const int32_t> ids, uint32_t vocab_size,
                        uint64_t tokenizer_fingerprint, uint64_t documents = 0);

// How much of a shard open() checks. The header, the magic, the version, the width
// and the file size are always checked.
enum class ShardCheck {
  header,  // O(1): nothing that needs reading the tokens
  full,    // also the checksum and every id < vocab_size (one pass over the file)
};

// A read-only, memory-mapped shard. Copies share the mapping.
class Shard {
 public:
  static Shard open(const std::string& path, ShardCheck check = ShardCheck::full);
  const std::string& path() const { return path_; }
  const ShardHeader& header() const { return header_; }
  uint64_t size() const { return header_.token_count; }
  // The token bytes (header().token_width bytes per id).
  const unsigned char* token_bytes() const { return tokens_; }
  int32_t operator[](uint64_t i) const;
  // Recomputes the checksum and the largest id (one pass); throws ShardError on a
  // mismatch or an id >= vocab_size.
  void verify() const;

 private:
  std::string path_;
  ShardHeader header_;
  std::shared_ptr<const void> mapping_;
  const unsigned char* tokens_ = nullptr;
};

// Reads just the header of a shard, with the same checks as Shard::open(path, header).
ShardHeader read_shard_header(const std::string& path);

}  // namespace kvroute
