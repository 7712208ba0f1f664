// Next-token sampling: greedy, temperature, top-k and top-p (nucleus), seeded by
// the counter-based generator so a (seed, sequence, step) always draws the same.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "kvroute/inference.h"
#include "kvroute/rng.h"

namespace kvroute {

namespace {

int argmax(const float* logits, int V) {
  int best = 0;
  for (int i = 1; i < V; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

void check_finite(const float* logits, int V) {
  for (int i = 0; i < V; ++i)
    if (!std::isfinite(logits[i]))
      throw std::runtime_error("sampling: logit of token " + std::to_string(i) + " is not finite (" +
                               std::to_string(logits[i]) + ")");
}

// Kept token ids, most likely first, with their unnormalised probabilities; `total` is their sum.
struct Candidates {
  std::vector<int> ids;
  std::vector<double> weight;
  double total = 0;
};

Candidates candidates(const float* logits, int V, const SamplingOptions& opt) {
  const int k = opt.top_k > 0 ? std::min(opt.top_k, V) : V;
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  auto more_likely = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), more_likely);
  Candidates c;
  const double top = logits[order[0]] / opt.temperature;
  double total = 0;
  for (int i = 0; i < k; ++i) {
    const double w = std::exp(logits[order[i]] / opt.temperature - top);
    c.ids.push_back(order[i]);
    c.weight.push_back(w);
    total += w;
  }
  if (opt.top_p < 1) {
    // The smallest prefix whose probability reaches top_p (the token that crosses it is kept).
    double cum = 0;
    std::size_t keep = 0;
    while (keep < c.ids.size()) {
      cum += c.weight[keep++];
      if (cum >= opt.top_p * total) break;
    }
    c.ids.resize(keep);
    c.weight.resize(keep);
    total = cum;
  }
  c.total = total;
  return c;
}

}  // namespace

void validate_sampling(const SamplingOptions& opt) {
  if (!(opt.temperature >= 0) || !std::isfinite(opt.temperature))
    throw std::invalid_argument("--temperature must be a finite number >= 0 (0 = greedy), got " +
                                std::to_string(opt.temperature));
  if (opt.top_k < 0) throw std::invalid_argument("--top-k must be >= 0 (0 = off), got " + std::to_string(opt.top_k));
  if (!(opt.top_p > 0 && opt.top_p <= 1))
    throw std::invalid_argument("--top-p must be in (0, 1] (1 = off), got " + std::to_string(opt.top_p));
}

std::vector<double> sampling_distribution(const float* logits, int V, const SamplingOptions& opt) {
  validate_sampling(opt);
  check_finite(logits, V);
  std::vector<double> p(V, 0.0);
  if (opt.temperature == 0) {
    p[argmax(logits, V)] = 1;
    return p;
  }
  const Candidates c = candidates(logits, V, opt);
  for (std::size_t i = 0; i < c.ids.size(); ++i) p[c.ids[i]] = c.weight[i] / c.total;
  return p;
}

int sample_token(const float* logits, int V, const SamplingOptions& opt, uint64_t counter) {
  validate_sampling(opt);
  check_finite(logits, V);
  if (opt.temperature == 0) return argmax(logits, V);
  const Candidates c = candidates(logits, V, opt);
  const double u = uniform01(opt.seed, kStreamSample, counter) * c.total;
  double cum = 0;
  for (std::size_t i = 0; i < c.ids.size(); ++i) {
    cum += c.weight[i];
    if (u < cum) return c.ids[i];
  }
  return c.ids.back();  // u rounded up to the total
}

}  // namespace kvroute
