#include "kvroute/routing.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "config/did_you_mean.h"
#include "kvroute/rng.h"
#include "kvroute/strategy.h"

namespace kvroute {

namespace {

RouteTable empty_table(int B, int L) {
  if (B < 0 || L < 0)
    throw std::invalid_argument("route table needs B >= 0 and L >= 0 (got B=" + std::to_string(B) +
                                ", L=" + std::to_string(L) + ")");
  RouteTable t;
  t.B = B;
  t.L = L;
  t.src.assign(static_cast<std::size_t>(B) * L, 0);
  return t;
}

// Counter for one draw of (step, micro, b, l, draw). Folding each field through splitmix64
// gives distinct tuples unrelated counters (sharing one needs a 64-bit hash collision) and,
// unlike packing fields into bit ranges, has no field width that a long run could overflow.
uint64_t route_counter(uint64_t step, uint64_t micro, uint64_t b, uint64_t l, uint64_t draw) {
  uint64_t h = splitmix64(step);
  h = splitmix64(h ^ micro);
  h = splitmix64(h ^ b);
  h = splitmix64(h ^ l);
  return splitmix64(h ^ draw);
}

const RoutingScheme& find_scheme(const std::string& name) {
  std::vector<std::string> names;
  for (const RoutingScheme& s : routing_schemes()) {
    if (s.name == name) return s;
    names.emplace_back(s.name);
  }
  std::string expected;
  for (const std::string& n : names) expected += (expected.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown routing scheme '" + name + "' (expected " + expected + ")" +
                              did_you_mean(nearest(name, names, 2)));
}

}  // namespace

// Every scheme, in the order routing.scheme's choices and README list them.
const std::vector<RoutingScheme>& routing_schemes() {
  static const std::vector<RoutingScheme> schemes = {
      {"previous", "layer l-1", [](const RouteDraw& d) { return static_cast<int32_t>(d.l - 1); }},
      {"chain", "what layer l-1 reads (contiguous groups sharing their first cache)",
       [](const RouteDraw& d) { return d.row[d.l - 1]; }},
      {"any", "a layer drawn uniformly from 0..l-1", [](const RouteDraw& d) { return d.uniform_below(d.l); }},
      {.name = "rdcla",
       .doc = "the first layer of l's group of routing.group adjacent layers (RD-CLA: the CLA@K map)",
       .source = [](const RouteDraw& d) { return static_cast<int32_t>(d.l / d.group * d.group); },
       .uses_group = true},
  };
  return schemes;
}

std::vector<std::string_view> routing_scheme_names() {
  std::vector<std::string_view> names;
  for (const RoutingScheme& s : routing_schemes()) names.push_back(s.name);
  return names;
}

int32_t RouteDraw::uniform_below(int n) const {
  return static_cast<int32_t>(uniform_int(seed, kStreamRouting, route_counter(step, micro, b, l, 1), n));
}

std::vector<int32_t> RouteTable::layer(int l) const {
  if (l < 0 || l >= L)
    throw std::out_of_range("layer " + std::to_string(l) + " out of range 0.." + std::to_string(L - 1));
  std::vector<int32_t> col(B);
  for (int b = 0; b < B; ++b) col[b] = at(b, l);
  return col;
}

bool RouteTable::is_source(int s) const {
  for (int32_t v : src)
    if (v == s) return true;
  return false;
}

RouteTable identity_routes(int B, int L) {
  RouteTable t = empty_table(B, L);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l) t.src[static_cast<std::size_t>(b) * L + l] = l;
  return t;
}

RouteTable fixed_routes(int B, const std::vector<int>& strategy_src) {
  const int L = static_cast<int>(strategy_src.size());
  // Only the training invariant is checked here (src <= l); deployment validity is
  // the strategy parser's job.
  for (int l = 0; l < L; ++l)
    if (strategy_src[l] < 0 || strategy_src[l] > l)
      throw std::invalid_argument("layer " + std::to_string(l) + " reads layer " +
                                  std::to_string(strategy_src[l]) + " (must be in 0.." + std::to_string(l) + ")");
  RouteTable t = empty_table(B, L);
  for (int b = 0; b < B; ++b)
    for (int l = 0; l < L; ++l) t.src[static_cast<std::size_t>(b) * L + l] = strategy_src[l];
  return t;
}

RouteTable sample_routes(const RoutingConfig& rc, int B, int L, uint64_t seed, uint64_t step, uint64_t micro) {
  if (rc.mode == "none") return identity_routes(B, L);
  if (rc.mode == "fixed") return fixed_routes(B, parse_strategy(rc.strategy, L).src);
  if (rc.mode != "stochastic")
    throw std::invalid_argument("unknown routing mode '" + rc.mode + "' (expected none, stochastic, fixed)");

  const RoutingScheme& scheme = find_scheme(rc.scheme);
  bool per_sequence;
  if (rc.granularity == "sequence") per_sequence = true;
  else if (rc.granularity == "batch") per_sequence = false;
  else
    throw std::invalid_argument("unknown routing granularity '" + rc.granularity + "' (expected sequence, batch)");
  if (!(rc.p >= 0.0 && rc.p <= 1.0))
    throw std::invalid_argument("routing p must be in [0, 1] (got " + std::to_string(rc.p) + ")");
  if (scheme.uses_group && rc.group < 1)
    throw std::invalid_argument("routing group must be >= 1 for scheme " + std::string(scheme.name) + " (got " +
                                std::to_string(rc.group) + ")");

  RouteTable t = identity_routes(B, L);
  for (int b = 0; b < B; ++b) {
    // Batch granularity: every sequence replays row 0's draws.
    const uint64_t rb = per_sequence ? static_cast<uint64_t>(b) : 0;
    int32_t* row = &t.src[static_cast<std::size_t>(b) * L];
    for (int l = 1; l < L; ++l) {
      if (uniform01(seed, kStreamRouting, route_counter(step, micro, rb, l, 0)) >= rc.p) continue;
      row[l] = scheme.source(RouteDraw{row, l, rc.group, seed, step, micro, rb});
    }
  }
  return t;
}

}  // namespace kvroute
