// Compares depth-wise KV sharing strategies on one trained model: validation
// loss and perplexity under each strategy's fixed source map, and the fraction
// of the KV cache the strategy keeps.
#pragma once

#include <string>
#include <vector>

#include "kvroute/model.h"
#include "kvroute/strategy.h"

namespace kvroute {

struct StrategyResult {
  SharingStrategy strategy;
  double val_loss = 0;
  double perplexity = 0;
};

std::vector<StrategyResult> evaluate_strategies(Model& model, const std::vector<int32_t>& val_tokens,
                                                const std::vector<SharingStrategy>& strategies, int B, int T,
                                                int n_batches);

// Markdown table; the loss change is relative to the first row.
std::string strategy_table_markdown(const std::vector<StrategyResult>& results);

}  // namespace kvroute
