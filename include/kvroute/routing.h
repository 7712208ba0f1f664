// Stochastic KV routing: the per-step table src[b][l] telling which layer's
// K/V the queries of layer l attend to, for sequence b.
#pragma once

#include <cstdint>
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

// Samples the routing table for one micro-batch. Deterministic in
// (seed, step, micro): the same arguments always give the same table, so a
// resumed run sees the same routes again. mode none -> identity;
// fixed -> the configured strategy; stochastic -> per the scheme:
//   previous: with prob p, src = l-1
//   chain:    with prob p, src = src[l-1] (contiguous groups sharing the first cache)
//   any:      with prob p, src uniform over 0..l-1
//   rdcla:    with prob p, src = the first layer of l's group of rc.group adjacent layers
//             (the CLA@K map; RD-CLA); else l's own
// granularity batch draws once and shares it across all sequences.
RouteTable sample_routes(const RoutingConfig& rc, int B, int L, uint64_t seed, uint64_t step, uint64_t micro);

}  // namespace kvroute
