// Token data for training and evaluation.
// Training windows are drawn at random positions, as a pure function of
// (seed, step, micro-batch, row), so a resumed run draws the same windows.
// Validation walks fixed, evenly spaced windows, so every evaluation of a
// checkpoint sees the same tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvroute/config.h"

namespace kvroute {

struct Batch {
  int B = 0, T = 0;
  std::vector<int32_t> inputs;   // [B*T]
  std::vector<int32_t> targets;  // [B*T], inputs shifted by one
};

struct Corpus {
  std::string tokenizer;         // "byte"
  int vocab_size = 0;
  std::vector<int32_t> train;
  std::vector<int32_t> val;
};

// Loads the corpus named by the data config. Throws std::runtime_error naming
// the file and the problem (missing, empty, too short for one window).
Corpus load_corpus(const DataConfig& dc);

// Byte-level tokenizer: one token per byte, vocabulary 256.
std::vector<int32_t> byte_encode(const std::string& text);
std::string byte_decode(const std::vector<int32_t>& ids);

// One training micro-batch of B windows of T+1 tokens.
Batch train_batch(const std::vector<int32_t>& tokens, int B, int T, uint64_t seed, uint64_t step, uint64_t micro);
// Validation batch i of n_batches: B*n_batches evenly spaced windows over the split.
Batch val_batch(const std::vector<int32_t>& tokens, int B, int T, int i, int n_batches);

}  // namespace kvroute
