// The training loop: micro-batches with sampled KV routes, gradient
// accumulation, AdamW, logging (text + metrics.jsonl), periodic evaluation and
// checkpoints into the run directory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvroute/config.h"

namespace kvroute {

struct TrainResult {
  long steps = 0;
  std::vector<float> losses;     // training loss of every step
  double val_loss = 0;           // at the end, full cache
  std::string run_dir;
  std::string final_checkpoint;
};

TrainResult train(const Config& cfg);

// Entropy (nats) of the unigram distribution of tokens: the loss of a model that ignores context.
double unigram_entropy(const std::vector<int32_t>& tokens);

// Validation loss of a model under a fixed source map (src.size() == n_layers).
class Model;
struct Corpus;
double validation_loss(Model& model, const std::vector<int32_t>& val_tokens, int B, int T, int n_batches,
                       const std::vector<int>& src);

}  // namespace kvroute
