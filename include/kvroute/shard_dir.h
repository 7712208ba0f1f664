// A directory of token shards, as written by `kvroute data encode`:
//
//   DIR/manifest.yaml       written last: its presence means the directory is complete.
//                           format "kvroute-shards-1", the tokenizer (identity,
//                           fingerprint, vocab_size), the document rule, the validation
//                           fraction, the inputs, and per shard: file, split, tokens,
//                           documents, checksum (the header's, in hex)
//   DIR/train_00000.bin ... training shards (shard.h), documents in input order
//   DIR/val_00000.bin ...   validation shards
//   DIR/tokenizer/          a copy of the tokenizer directory (absent for "byte"), so
//                           the shards can be decoded without knowing where it came from
//
// Splitting by document: documents are numbered 0, 1, 2, ... in input order, and
// document i goes to validation when floor((i + 1) * f) > floor(i * f) (f = the
// validation fraction): exactly one in every 1/f documents, spread evenly over the
// corpus. A document never straddles two shards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvroute {

inline bool is_validation_document(uint64_t index, double val_fraction) {
  return static_cast<uint64_t>((index + 1) * val_fraction) > static_cast<uint64_t>(index * val_fraction);
}

struct ShardEntry {
  std::string path;   // DIR/<file>
  std::string split;  // "train" | "val"
  uint64_t tokens = 0;
  uint64_t documents = 0;
  uint64_t checksum = 0;
};

struct ShardDirInfo {
  std::string dir;
  std::string tokenizer_identity;  // Tokenizer::identity()
  uint64_t tokenizer_fingerprint = 0;
  uint32_t vocab_size = 0;
  std::string document_rule;  // blank | line | file
  double val_fraction = 0;
  std::vector<std::string> inputs;
  std::vector<ShardEntry> shards;  // in manifest order: train shards, then val shards
  std::vector<ShardEntry> split(const std::string& name) const;
  uint64_t tokens(const std::string& split_name) const;
  // DIR/tokenizer when it exists, else "byte" for byte shards, else "".
  std::string tokenizer_spec() const;
};

// Reads DIR/manifest.yaml. Throws std::runtime_error naming the directory or the
// manifest and the problem (missing, incomplete encode, malformed entry).
ShardDirInfo read_shard_dir(const std::string& dir);
void write_manifest(const ShardDirInfo& info);

}  // namespace kvroute
