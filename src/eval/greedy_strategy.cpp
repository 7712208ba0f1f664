// greedy:N - a sharing map chosen for one checkpoint by backward elimination of
// cache layers, scored by validation loss.
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "kvroute/evaluate.h"

namespace kvroute {

int parse_greedy_count(const std::string& spec, int n_layers) {
  const std::size_t colon = spec.find(':');
  const std::string arg = colon == std::string::npos ? "" : spec.substr(colon + 1);
  std::size_t used = 0;
  int n = 0;
  try {
    n = std::stoi(arg, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (arg.empty() || used != arg.size() || n < 1 || n > n_layers)
    throw std::invalid_argument("strategy '" + spec + "': greedy:N needs an integer N in 1.." +
                                std::to_string(n_layers) + " (the cache layers to keep; the model has " +
                                std::to_string(n_layers) + " layers)");
  return n;
}

GreedySearch greedy_search(const std::string& name, int n_layers, int n_cache,
                           const std::function<double(const SharingStrategy&)>& loss) {
  if (n_cache < 1 || n_cache > n_layers)
    throw std::invalid_argument("greedy search: cache layers to keep must be in 1.." + std::to_string(n_layers));
  std::vector<int> caches;
  for (int l = 0; l < n_layers; ++l) caches.push_back(l);
  auto strategy_of = [&](const std::vector<int>& c) {
    return SharingStrategy{name, strategy_from_cache_layers(c, n_layers)};
  };
  GreedySearch g;
  GreedyStep start{-1, strategy_of(caches), 0};
  start.val_loss = loss(start.strategy);
  ++g.evaluations;
  g.path.push_back(start);
  while (static_cast<int>(caches.size()) > n_cache) {
    GreedyStep best;
    best.val_loss = std::numeric_limits<double>::infinity();
    std::size_t best_index = 0;
    for (std::size_t i = 1; i < caches.size(); ++i) {  // index 0 is layer 0, never dropped
      std::vector<int> candidate = caches;
      candidate.erase(candidate.begin() + static_cast<long>(i));
      const SharingStrategy s = strategy_of(candidate);
      const double l = loss(s);
      ++g.evaluations;
      if (l < best.val_loss || best.dropped_layer < 0) {
        best = GreedyStep{caches[i], s, l};
        best_index = i;
      }
    }
    caches.erase(caches.begin() + static_cast<long>(best_index));
    g.path.push_back(best);
  }
  g.strategy = g.path.back().strategy;
  return g;
}

std::string greedy_path_string(const GreedySearch& g) {
  std::string s;
  char buf[64];
  for (const GreedyStep& step : g.path) {
    if (step.dropped_layer < 0) {
      std::snprintf(buf, sizeof buf, "full (%.4f)", step.val_loss);
    } else {
      std::snprintf(buf, sizeof buf, " -> drop %d (%.4f)", step.dropped_layer, step.val_loss);
    }
    s += buf;
  }
  return s;
}

}  // namespace kvroute
