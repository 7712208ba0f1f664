// Routed causal attention, flash style: no [Tq, Tk] matrix is ever built.
//
// Forward: one task per (sequence b, query head h, block of queries). The task
// streams over key tiles of sequence b's source layer, keeping a running max,
// running sum and unnormalised output per query (online softmax).
//
// Backward: one task per (sequence b, kv head). That task owns the (b, kv head)
// slice of dK/dV in the source layer and the dq rows of the query heads in its
// group, so there are no races and no atomics, and every sum runs in a fixed
// order (bitwise deterministic). Sequences that share a source layer write
// disjoint slices (offset b * seq_stride).
//
// With train.precision bf16 at head_dim 64 and 128 both directions run the bf16 twin of the
// CUDA tensor-core kernels instead (attention_bf16_cpu.cpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/attention_bf16_cpu.h"
#include "cpu/attention_flash.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_math.h"
#include "cpu/tile_gemm.h"

namespace kvroute {
namespace {

constexpr int kQueryBlock = 32;
constexpr int kKeyBlock = 64;
static_assert(kQueryBlock % cpu::kTileRows == 0 && kKeyBlock % cpu::kTileRows == 0);
static_assert(kKeyBlock % cpu::kTileCols == 0);
// Backward tiles are [key, query]: queries are the GEMM columns.
constexpr int kBackwardQueryBlock = 32;
constexpr int kBackwardKeyBlock = 32;
static_assert(kBackwardQueryBlock % cpu::kTileCols == 0 && kBackwardKeyBlock % cpu::kTileRows == 0);

using cpu::round_up;

// dst[r * ld + c] = scale * src[r * src_stride + c] for r < rows, c < cols; zero elsewhere
// in the [total_rows, ld] tile. Pads tiles to the multiples tile_gemm needs.
void load_rows(float* dst, int ld, const float* src, std::size_t src_stride, int rows, int cols, int total_rows,
               float scale = 1.0f) {
  std::fill(dst, dst + static_cast<std::size_t>(total_rows) * ld, 0.f);
  for (int r = 0; r < rows; ++r) {
    const float* s = src + r * src_stride;
    float* d = dst + static_cast<std::size_t>(r) * ld;
#pragma omp simd
    for (int c = 0; c < cols; ++c) d[c] = s[c] * scale;
  }
}

// tile[d * ld + j] = rows[j * row_stride + d] for j < n, zero for n <= j < ld: a [D, ld] tile, so
// scores against all its keys come out of one tile_gemm.
void load_transposed(float* tile, int ld, const float* rows, std::size_t row_stride, int n, int D) {
  for (int d = 0; d < D; ++d) std::fill(tile + static_cast<std::size_t>(d) * ld + n, tile + (d + 1) * ld, 0.f);
  for (int j = 0; j < n; ++j) {
    const float* r = rows + j * row_stride;
    for (int d = 0; d < D; ++d) tile[static_cast<std::size_t>(d) * ld + j] = r[d];
  }
}

// dst rows [0, rows) += tile rows (first cols columns).
void add_rows(float* dst, std::size_t dst_stride, const float* tile, int ld, int rows, int cols) {
  for (int r = 0; r < rows; ++r) {
    float* d = dst + r * dst_stride;
    const float* t = tile + static_cast<std::size_t>(r) * ld;
#pragma omp simd
    for (int c = 0; c < cols; ++c) d[c] += t[c];
  }
}

}  // namespace

void CpuBackend::attention_forward(const AttentionForward& p) {
  if (bf16_attention(p.shape)) return cpu::attention_forward_bf16(p, bf16_attention_path_);
  const AttentionDims g = forward_dims(p);
  if (g.empty()) return;
  const long n_tasks = cpu::forward_task_count(g, kQueryBlock);
  const int D = g.D;
  const int Dp = round_up(D, cpu::kTileCols);  // padded head_dim of the value/output tiles
  const bool v_in_place = Dp == D;               // value rows can feed tile_gemm straight from memory
  const int max_keys = g.keys_visible(g.Tq - 1);
  const int kt_ld = round_up(max_keys, kKeyBlock);

#pragma omp parallel
  {
    std::vector<float> q_tile(static_cast<std::size_t>(kQueryBlock) * D);  // scaled queries
    // K^T of one (source layer, sequence, kv head) for all visible keys, [D, kt_ld], zero padded;
    // built once and reused by every query block and query head of the group this thread runs.
    std::vector<float> k_t(static_cast<std::size_t>(D) * kt_ld);
    const float* k_t_of = nullptr;  // the K it holds
    std::vector<float> v_tile(v_in_place ? 0 : static_cast<std::size_t>(kKeyBlock) * Dp);
    std::vector<float> scores(static_cast<std::size_t>(kQueryBlock) * kKeyBlock);  // then probabilities
    std::vector<float> acc(static_cast<std::size_t>(kQueryBlock) * Dp);           // unnormalised output
    cpu::SoftmaxRow rows_state[kQueryBlock];

#pragma omp for schedule(dynamic)
    for (long task = 0; task < n_tasks; ++task) {
      const cpu::ForwardTask t = cpu::forward_task(g, kQueryBlock, task);
      const int layer = p.src[t.b];
      const float* K = p.k_layers[layer] + g.kv_offset(t.b, t.h / g.group);
      const float* V = p.v_layers[layer] + g.kv_offset(t.b, t.h / g.group);
      const int rows = round_up(t.nq, cpu::kTileRows);

      load_rows(q_tile.data(), D, p.q + g.q_offset(t.b, t.i0, t.h), g.q_row, t.nq, D, kQueryBlock, g.scale);
      if (k_t_of != K) {
        load_transposed(k_t.data(), kt_ld, K, g.kv_row, max_keys, D);
        k_t_of = K;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(rows_state, rows_state + kQueryBlock, cpu::SoftmaxRow{});

      for (int j0 = 0; j0 < t.n_keys; j0 += kKeyBlock) {
        const int nk = std::min(kKeyBlock, t.n_keys - j0);
        const float* v_rows = V + static_cast<std::size_t>(j0) * g.kv_row;
        std::size_t v_ld = g.kv_row;
        if (!v_in_place) {
          load_rows(v_tile.data(), Dp, v_rows, g.kv_row, nk, D, kKeyBlock);
          v_rows = v_tile.data();
          v_ld = Dp;
        }
        // Only the key columns some query of the block sees (the diagonal tile is partly in the future).
        const int cols = round_up(nk, cpu::kTileCols);
        cpu::tile_gemm<false>(scores.data(), kKeyBlock, q_tile.data(), D, k_t.data() + j0, kt_ld, rows, cols, D);

        for (int i = 0; i < rows; ++i) {
          float* s = scores.data() + static_cast<std::size_t>(i) * kKeyBlock;
          const int cnt = cpu::visible_in_tile(g, t, i, j0, nk);
          if (cnt <= 0) {  // this tile is entirely in query i's future
            std::fill(s, s + nk, 0.f);
            continue;
          }
          cpu::online_softmax_update(s, cnt, rows_state[i], acc.data() + static_cast<std::size_t>(i) * Dp, Dp);
          std::fill(s + cnt, s + nk, 0.f);  // the P.V product reads nk columns
        }
        cpu::tile_gemm(acc.data(), Dp, scores.data(), kKeyBlock, v_rows, static_cast<int>(v_ld), rows, Dp, nk);
      }
      cpu::finalize_rows(g, p, t, acc.data(), Dp, rows_state);
    }
  }
}

// With P = exp(scale * q.k - lse) and Di = dot(dout_i, out_i):
//   dV_j += sum_i P_ij dout_i,  dS_ij = scale * P_ij (dout_i . v_j - Di),
//   dq_i += sum_j dS_ij k_j,  dK_j += sum_i dS_ij q_i.
// Everything runs on [key, query] tiles (P^T, dS^T), so no tile is ever transposed:
// per query head the queries and output gradients are transposed once ([D, Tq]),
// dq is accumulated transposed and added back at the end. Loops: query head of
// the group, key tile (its dK/dV accumulate in tiles), query blocks that see it.
void CpuBackend::attention_backward(const AttentionBackward& p) {
  if (bf16_attention(p.shape)) return cpu::attention_backward_bf16(p, bf16_attention_path_);
  const AttentionDims g = backward_dims(p);
  if (g.empty()) return;
  constexpr int QB = kBackwardQueryBlock, KB = kBackwardKeyBlock;
  using cpu::floatv;
  using cpu::kLanes;
  const int D = g.D;
  const int Dp = round_up(D, cpu::kTileCols);  // columns of the dK/dV tiles
  const int Dr = round_up(D, cpu::kTileRows);  // rows of the transposed dq
  const int Tqp = round_up(g.Tq, QB);          // queries, padded to whole blocks
  const bool rows_in_place = Dp == D;          // q/dout rows can feed tile_gemm straight from memory
  const long n_tasks = cpu::backward_task_count(g);
  const int n_keys = g.keys_visible(g.Tq - 1);

#pragma omp parallel
  {
    auto buffer = [](int rows, int cols) { return std::vector<float>(static_cast<std::size_t>(rows) * cols); };
    // Per query head; padding columns (queries >= Tq) and rows (d >= D) stay zero.
    std::vector<float> q_t = buffer(D, Tqp), do_t = buffer(D, Tqp), dq_t = buffer(Dr, Tqp);
    std::vector<float> q_pad = buffer(rows_in_place ? 0 : g.Tq, Dp), do_pad = buffer(rows_in_place ? 0 : g.Tq, Dp);
    // +inf log-sum-exp makes P exactly 0 for padding queries.
    std::vector<float> lse(Tqp, std::numeric_limits<float>::infinity()), row_dot(Tqp, 0.f);
    // Per key tile.
    std::vector<float> k_rows = buffer(KB, D), v_rows = buffer(KB, D), k_t = buffer(Dr, KB);
    std::vector<float> dk_acc = buffer(KB, Dp), dv_acc = buffer(KB, Dp);
    std::vector<float> prob_t = buffer(KB, QB), dscore_t = buffer(KB, QB);  // P^T and dS^T, [key, query]

#pragma omp for schedule(dynamic)
    for (long task = 0; task < n_tasks; ++task) {
      const auto [b, kv_head] = cpu::backward_task(g, task);
      const int layer = p.src[b];
      const std::size_t kv_off = g.kv_offset(b, kv_head);
      const float* K = p.k_layers[layer] + kv_off;
      const float* V = p.v_layers[layer] + kv_off;
      float* dK = p.dk_layers[layer] + kv_off;
      float* dV = p.dv_layers[layer] + kv_off;

      for (int hh = 0; hh < g.group; ++hh) {
        const int h = kv_head * g.group + hh;
        cpu::load_row_stats(g, p, b, h, row_dot.data(), lse.data());
        for (int i = 0; i < g.Tq; ++i) {
          const float* q = p.q + g.q_offset(b, i, h);
          const float* go = p.dout + g.q_offset(b, i, h);
          for (int d = 0; d < D; ++d) {
            q_t[static_cast<std::size_t>(d) * Tqp + i] = q[d] * g.scale;  // scaled as in the forward
            do_t[static_cast<std::size_t>(d) * Tqp + i] = go[d];
          }
          if (!rows_in_place) {
            std::copy(q, q + D, q_pad.data() + static_cast<std::size_t>(i) * Dp);
            std::copy(go, go + D, do_pad.data() + static_cast<std::size_t>(i) * Dp);
          }
        }
        const float* q_rows = rows_in_place ? p.q + g.q_offset(b, 0, h) : q_pad.data();
        const float* do_rows = rows_in_place ? p.dout + g.q_offset(b, 0, h) : do_pad.data();
        const std::size_t rows_ld = rows_in_place ? g.q_row : Dp;
        std::fill(dq_t.begin(), dq_t.end(), 0.f);

        for (int j0 = 0; j0 < n_keys; j0 += KB) {
          const int nk = std::min(KB, n_keys - j0);
          const int key_rows = round_up(nk, cpu::kTileRows);
          load_rows(k_rows.data(), D, K + j0 * g.kv_row, g.kv_row, nk, D, KB);
          load_rows(v_rows.data(), D, V + j0 * g.kv_row, g.kv_row, nk, D, KB);
          load_transposed(k_t.data(), KB, K + j0 * g.kv_row, g.kv_row, nk, D);
          std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
          std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
          const int first_query = static_cast<int>(std::max<long>(0, j0 - g.q_pos0));

          for (int i0 = first_query / QB * QB; i0 < g.Tq; i0 += QB) {
            const int nq = std::min(QB, g.Tq - i0);
            cpu::tile_gemm<false>(prob_t.data(), QB, k_rows.data(), D, q_t.data() + i0, Tqp, key_rows, QB, D);
            cpu::tile_gemm<false>(dscore_t.data(), QB, v_rows.data(), D, do_t.data() + i0, Tqp, key_rows, QB,
                                  D);  // v . dout

            // Rows past nk (padding keys) are left as they are: only dK/dV rows < nk are kept and
            // the dq product stops at key nk.
            for (int r = 0; r < nk; ++r) {
              float* pr = prob_t.data() + static_cast<std::size_t>(r) * QB;
              float* ds = dscore_t.data() + static_cast<std::size_t>(r) * QB;
              // Query i0 + c sees key j0 + r from c = j0 + r - q_pos0 - i0 on.
              const long first = std::clamp<long>(j0 + r - g.q_pos0 - i0, 0, QB);
              for (int c = 0; c < QB; c += kLanes) {
                const floatv prob = cpu::fast_exp(cpu::load_vec(pr + c) - cpu::load_vec(lse.data() + i0 + c));
                cpu::store_vec(pr + c, prob);
                cpu::store_vec(ds + c, prob * (cpu::load_vec(ds + c) - cpu::load_vec(row_dot.data() + i0 + c)) *
                                           g.scale);
              }
              std::fill(pr, pr + first, 0.f);
              std::fill(ds, ds + first, 0.f);
            }

            cpu::tile_gemm(dv_acc.data(), Dp, prob_t.data(), QB, do_rows + i0 * rows_ld, static_cast<int>(rows_ld),
                           key_rows, Dp, nq);
            cpu::tile_gemm(dk_acc.data(), Dp, dscore_t.data(), QB, q_rows + i0 * rows_ld, static_cast<int>(rows_ld),
                           key_rows, Dp, nq);
            cpu::tile_gemm(dq_t.data() + i0, Tqp, k_t.data(), KB, dscore_t.data(), QB, Dr, QB, nk);
          }

          add_rows(dK + j0 * g.kv_row, g.kv_row, dk_acc.data(), Dp, nk, D);
          add_rows(dV + j0 * g.kv_row, g.kv_row, dv_acc.data(), Dp, nk, D);
        }

        for (int i = 0; i < g.Tq; ++i) {
          float* dq = p.dq + g.q_offset(b, i, h);
          for (int d = 0; d < D; ++d) dq[d] += dq_t[static_cast<std::size_t>(d) * Tqp + i];
        }
      }
    }
  }
}

}  // namespace kvroute
