#include "kvroute/evaluate.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "kvroute/trainer.h"

namespace kvroute {

std::vector<StrategyResult> evaluate_strategies(Model& model, const std::vector<int32_t>& val_tokens,
                                                const std::vector<SharingStrategy>& strategies, int B, int T,
                                                int n_batches) {
  std::vector<StrategyResult> out;
  for (const SharingStrategy& s : strategies) {
    StrategyResult r;
    r.strategy = s;
    r.val_loss = validation_loss(model, val_tokens, B, T, n_batches, s.src);
    r.perplexity = std::exp(r.val_loss);
    out.push_back(r);
  }
  return out;
}

std::string strategy_table_markdown(const std::vector<StrategyResult>& results) {
  std::ostringstream os;
  os << "| strategy | source map | cache layers | KV kept | val loss | perplexity | loss vs " 
     << (results.empty() ? std::string("first") : results.front().strategy.name) << " |\n";
  os << "|---|---|---:|---:|---:|---:|---:|\n";
  for (const StrategyResult& r : results) {
    char buf[256];
    const double base = results.front().val_loss;
    std::snprintf(buf, sizeof buf, "| %s | %s | %d/%zu | %.1f%% | %.4f | %.3f | %+.2f%% |\n", r.strategy.name.c_str(),
                  r.strategy.map_string().c_str(), r.strategy.n_cache_layers(), r.strategy.src.size(),
                  100.0 * r.strategy.kv_fraction(), r.val_loss, r.perplexity, 100.0 * (r.val_loss - base) / base);
    os << buf;
  }
  return os.str();
}

}  // namespace kvroute
