// Token data for training and evaluation, as named by the data config.
//
// Two sources:
//   data.shards: DIR   token shards written by `kvroute data encode` (shard.h,
//                      shard_dir.h): the train shards are memory-mapped, the
//                      validation shards are read in manifest order.
//   data.train_path    a text file tokenized on load with data.tokenizer; the
//                      validation split is data.val_path, or the last
//                      data.val_fraction of the file, cut at a line break.
// Training windows come from a WindowLoader (loader.h) over Corpus::train.
// Validation walks fixed, evenly spaced windows of Corpus::val (val_batch), so
// every evaluation of a checkpoint sees the same tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvroute/config.h"
#include "kvroute/loader.h"
#include "kvroute/tokenizer.h"

namespace kvroute {

struct Corpus {
  std::string tokenizer;              // Tokenizer::identity(): "byte" or "sentencepiece-4096-<hex>"
  std::string tokenizer_fingerprint;  // fingerprint_hex(Tokenizer::fingerprint())
  int vocab_size = 0;
  std::shared_ptr<const Tokenizer> tok;  // decodes ids back to text
  std::string source;                    // one line for logs: where the tokens came from
  TokenStore train;                      // memory-mapped shards, or tokens in memory
  std::vector<int32_t> val;              // validation tokens, in a fixed order
};

enum class CorpusParts { train_and_val, val_only };

// Loads the corpus named by the data config. Throws std::runtime_error naming the
// key or file and the problem: missing or empty file, truncated or corrupt shard,
// shards from another tokenizer, both or neither of data.shards and data.train_path.
Corpus load_corpus(const DataConfig& dc, CorpusParts parts = CorpusParts::train_and_val);

// Refuses a model whose vocabulary differs from the tokenizer's, naming both keys.
// pretrained: the weights come from a pretrained model (model.init_from), whose embedding may
// have more rows than its tokenizer has ids (padded for speed, as Qwen's and Llama 3's are).
void check_model_vocab(const Corpus& corpus, int model_vocab_size, bool pretrained = false);

// The loader options the trainer uses (train.seq_len, train.seed, data.order; rank 0 of 1).
LoaderOptions loader_options(const Config& cfg);

// Byte-level tokenizer: one token per byte, vocabulary 256.
std::vector<int32_t> byte_encode(const std::string& text);
std::string byte_decode(const std::vector<int32_t>& ids);

}  // namespace kvroute
