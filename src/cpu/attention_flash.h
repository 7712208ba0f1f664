// What the CPU's flash-attention loops share, in fp32 (attention_cpu.cpp) and in bf16
// (attention_bf16_cpu.cpp): the task split, the online-softmax update of one query row over a
// key tile, and the finalize that writes out and the log-sum-exp. The inputs are checked once
// by the attention front (kvroute/attention_dims.h). The tile products differ (fp32 tiles vs
// pair-packed bf16), so each file keeps its own loop body around these pieces.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "cpu/cpu_math.h"
#include "kvroute/attention_dims.h"

namespace kvroute::cpu {

inline int round_up(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }

// Forward: one task per (sequence b, query head h, block of query_block queries).
struct ForwardTask {
  int b, h;
  int i0;      // first query of the block
  int nq;      // queries in the block
  int n_keys;  // keys the block's last query sees
};
inline long forward_task_count(const AttentionDims& g, int query_block) {
  return static_cast<long>(g.B) * g.H * ((g.Tq + query_block - 1) / query_block);
}
inline ForwardTask forward_task(const AttentionDims& g, int query_block, long task) {
  const int n_qblocks = (g.Tq + query_block - 1) / query_block;
  ForwardTask t;
  // Latest query blocks (most keys) first, for load balance.
  const int qb = n_qblocks - 1 - static_cast<int>(task % n_qblocks);
  t.h = static_cast<int>((task / n_qblocks) % g.H);
  t.b = static_cast<int>(task / n_qblocks / g.H);
  t.i0 = qb * query_block;
  t.nq = std::min(query_block, g.Tq - t.i0);
  t.n_keys = g.keys_visible(t.i0 + t.nq - 1);
  return t;
}

// Keys of the tile [j0, j0 + nk) that query i (relative to the block's first query i0) sees;
// <= 0 when the whole tile is in its future. Rows i >= nq are padding and see nothing.
inline int visible_in_tile(const AttentionDims& g, const ForwardTask& t, int i, int j0, int nk) {
  return i < t.nq ? std::min(nk, g.keys_visible(t.i0 + i) - j0) : 0;
}

// Backward: one task per (sequence b, kv head). It owns the (b, kv head) slice of dK/dV in the
// source layer and the dq rows of the query heads in its group: no races, no atomics, a fixed
// summation order whatever the thread count.
struct BackwardTask {
  int b, kv_head;
};
inline long backward_task_count(const AttentionDims& g) { return static_cast<long>(g.B) * g.Hkv; }
inline BackwardTask backward_task(const AttentionDims& g, long task) {
  return BackwardTask{static_cast<int>(task / g.Hkv), static_cast<int>(task % g.Hkv)};
}

// One query row's running state across key tiles.
struct SoftmaxRow {
  float max = -std::numeric_limits<float>::infinity();
  float sum = 0.f;
};

// Online softmax over one key tile for one query row: s[0, cnt) hold the row's scaled scores
// (cnt >= 1); on return they hold exp(s - running max), the running max and sum are updated,
// and the row's unnormalised output acc[0, width) is rescaled to the new max.
inline void online_softmax_update(float* s, int cnt, SoftmaxRow& row, float* acc, int width) {
  float tile_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : tile_max)
  for (int j = 0; j < cnt; ++j) tile_max = s[j] > tile_max ? s[j] : tile_max;
  const float new_max = std::max(row.max, tile_max);
  const float correction = fast_exp(row.max - new_max);  // 0 on the first tile
  const float tile_sum = exp_shifted(s, s, cnt, new_max);  // summed before any rounding of P
  row.sum = row.sum * correction + tile_sum;
  row.max = new_max;
#pragma omp simd
  for (int d = 0; d < width; ++d) acc[d] *= correction;
}

// out = acc / sum for the block's queries, and lse = max + log(sum) when lse is wanted.
// acc: [nq, acc_ld] unnormalised outputs of the task's queries.
inline void finalize_rows(const AttentionDims& g, const AttentionForward& p, const ForwardTask& t,
                          const float* acc, int acc_ld, const SoftmaxRow* rows) {
  for (int i = 0; i < t.nq; ++i) {
    const float inv = 1.0f / rows[i].sum;
    const float* o = acc + static_cast<std::size_t>(i) * acc_ld;
    float* dst = p.out + g.q_offset(t.b, t.i0 + i, t.h);
#pragma omp simd
    for (int d = 0; d < g.D; ++d) dst[d] = o[d] * inv;
    if (p.lse) p.lse[g.lse_offset(t.b, t.h, t.i0 + i)] = rows[i].max + std::log(rows[i].sum);
  }
}

// Backward, per query head h of sequence b: delta_i = dout_i . out_i (fp32) and the forward's
// log-sum-exp, for every query.
inline void load_row_stats(const AttentionDims& g, const AttentionBackward& p, int b, int h, float* row_dot,
                           float* lse) {
  for (int i = 0; i < g.Tq; ++i) {
    const float* o = p.out + g.q_offset(b, i, h);
    const float* go = p.dout + g.q_offset(b, i, h);
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < g.D; ++d) dot += o[d] * go[d];
    row_dot[i] = dot;
    lse[i] = p.lse[g.lse_offset(b, h, i)];
  }
}

}  // namespace kvroute::cpu
