// Stochastic KV routing: the per-step table src[b][l] telling which layer's
// K/V the queries of layer l attend to, for sequence b.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "kvroute/config.h"

namespace kvroute {

// Row-major [B][L] table of source layers.
struct RouteTable {
  int B = 0;
  int L = 0;
  std::vector<int32_t> src;  // src[b * L + l]
  int32_t at(int b, int l) const { return src[static_cast<std::size_t>(b) * L + l]; }
  // Column for one layer, [B] (what the attention op takes).
  std::vector<int32_t> layer(int l) const;
  // True if some sequence's layer reads layer s's K/V (so s must compute them).
  bool is_source(int s) const;
};

RouteTable identity_routes(int B, int L);
RouteTable fixed_routes(int B, const std::vector<int>& strategy_src);

// What a routing scheme is told when layer l (>= 1) of one sequence routes away.
struct RouteDraw {
  const int32_t* row;  // the sequence's sources, final for layers 0..l-1
  int l;
  int group;           // routing.group
  // Uniform in [0, n): this layer's own draw, deterministic as sample_routes is.
  int32_t uniform_below(int n) const;

  uint64_t seed, step, micro, b;  // what uniform_below draws from (b: 0 under batch granularity)
};

// One stochastic routing scheme. routing_schemes() is the one list of them: routing.scheme's
// allowed values, the unknown-name error and README's table (test_routing compares them)
// come from it. Adding a scheme is one entry there.
struct RoutingScheme {
  std::string_view name;
  std::string_view doc;                  // one line: the layer a routed layer l reads
  int32_t (*source)(const RouteDraw&);   // that layer, in 0..l (an rdcla group head: l)
  bool uses_group = false;               // reads routing.group (which must then be >= 1)
};
const std::vector<RoutingScheme>& routing_schemes();
std::vector<std::string_view> routing_scheme_names();

// Samples the routing table for one micro-batch. Deterministic in
// (seed, step, micro): the same arguments always give the same table, so a
// resumed run sees the same routes again. mode none -> identity;
// fixed -> the configured strategy; stochastic -> each layer l >= 1 routes away with
// probability p, to the layer its scheme (routing_schemes()) names, else reads its own.
// Granularity batch draws once and shares it across all sequences.
RouteTable sample_routes(const RoutingConfig& rc, int B, int L, uint64_t seed, uint64_t step, uint64_t micro);

}  // namespace kvroute
