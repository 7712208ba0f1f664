// The bf16 twin of the CUDA tensor-core attention (attention_bf16_cpu.h says what is rounded
// where). The loops are those of the fp32 kernels (attention_cpu.cpp): forward tasks per
// (sequence, query head, 32 queries) streaming over tiles of 64 keys with an online softmax;
// backward tasks per (sequence, kv head) that own their dK/dV slice and dq rows, on
// [key, query] tiles. The tile products run on pair-packed bf16 operands (bf16_tile_gemm.h).
#include "cpu/attention_bf16_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/attention_flash.h"
#include "cpu/bf16_tile_gemm.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_math.h"

namespace kvroute::cpu {
namespace {

constexpr int kQueryBlock = 32;
constexpr int kKeyBlock = 64;  // the CUDA forward's key tile: the online softmax rounds P per tile
static_assert(kQueryBlock % kBf16TileRows == 0 && kKeyBlock % kBf16TileCols == 0 && kKeyBlock % 2 == 0);
// Backward tiles are [key, query]: queries are the GEMM columns.
constexpr int kBackwardQueryBlock = 32;
constexpr int kBackwardKeyBlock = 32;
static_assert(kBackwardQueryBlock % kBf16TileCols == 0 && kBackwardKeyBlock % kBf16TileRows == 0);

// The tile product of one path.
struct TileGemm {
  bool native;
  void operator()(float* C, int ldc, const uint32_t* A, int lda, const uint32_t* B, int ldb, int M, int N,
                  int K2, bool accumulate) const {
    if (native)
      bf16_tile_gemm_native(C, ldc, A, lda, B, ldb, M, N, K2, accumulate);
    else
      bf16_tile_gemm_emulated(C, ldc, A, lda, B, ldb, M, N, K2, accumulate);
  }
};

TileGemm tile_gemm_for(Bf16Path path, const char* op) {
  require(path == Bf16Path::Emulated || cpu_has_avx512_bf16(), op,
          "the native bf16 path needs AVX512-BF16 (avx512_bf16 in /proc/cpuinfo), which this CPU lacks");
  return TileGemm{path == Bf16Path::Native};
}

// Pairs along each row (the A operand of X Y^T, or the B operand of Y X^T after
// pack_transposed): dst[r * ld + c / 2] = pair(src[r][c], src[r][c + 1]) for r < rows, c < cols
// (an odd last column pairs with 0); everything else in the [total_rows, ld] tile is 0.
void pack_rows(uint32_t* dst, int ld, const float* src, std::size_t stride, int rows, int cols, int total_rows) {
  std::fill(dst, dst + static_cast<std::size_t>(total_rows) * ld, 0u);
  for (int r = 0; r < rows; ++r) {
    const float* s = src + r * stride;
    uint32_t* d = dst + static_cast<std::size_t>(r) * ld;
    for (int c = 0; c < cols / 2; ++c) d[c] = bf16_pair(s[2 * c], s[2 * c + 1]);
    if (cols % 2) d[cols / 2] = bf16_pair(s[cols - 1], 0.f);
  }
}

// The rows of src as columns, pairs along each row: dst[(c / 2) * ld + r] = pair(src[r][c],
// src[r][c + 1]) for r < rows; columns rows <= r < ld are 0. The B operand of X src^T.
void pack_transposed(uint32_t* dst, int ld, const float* src, std::size_t stride, int rows, int cols) {
  const int pairs = (cols + 1) / 2;
  for (int c = 0; c < pairs; ++c) std::fill(dst + static_cast<std::size_t>(c) * ld + rows, dst + (c + 1) * ld, 0u);
  for (int r = 0; r < rows; ++r) {
    const float* s = src + r * stride;
    for (int c = 0; c < cols / 2; ++c) dst[static_cast<std::size_t>(c) * ld + r] = bf16_pair(s[2 * c], s[2 * c + 1]);
    if (cols % 2) dst[static_cast<std::size_t>(cols / 2) * ld + r] = bf16_pair(s[cols - 1], 0.f);
  }
}

// Two consecutive rows interleaved, pairs down each column: dst[(r / 2) * ld + c] =
// pair(src[r][c], src[r + 1][c]) for r < rows, c < cols; the rest of the [total_rows / 2, ld]
// tile is 0 (total_rows even). The B operand of X src, summed over src's rows.
void pack_row_pairs(uint32_t* dst, int ld, const float* src, std::size_t stride, int rows, int cols,
                    int total_rows) {
  std::fill(dst, dst + static_cast<std::size_t>(total_rows / 2) * ld, 0u);
  for (int r = 0; r < rows; r += 2) {
    const float* s0 = src + r * stride;
    uint32_t* d = dst + static_cast<std::size_t>(r / 2) * ld;
    if (r + 1 < rows) {
      const float* s1 = s0 + stride;
      for (int c = 0; c < cols; ++c) d[c] = bf16_pair(s0[c], s1[c]);
    } else {
      for (int c = 0; c < cols; ++c) d[c] = bf16_pair(s0[c], 0.f);
    }
  }
}

}  // namespace

bool attention_bf16_native_available() { return cpu_has_avx512_bf16(); }

void attention_forward_bf16(const AttentionForward& p, Bf16Path path) {
  const AttentionDims g = forward_dims(p);
  if (g.empty()) return;
  const TileGemm gemm = tile_gemm_for(path, "attention_forward");
  const long n_tasks = forward_task_count(g, kQueryBlock);
  const int D = g.D;
  const int D2 = (D + 1) / 2;                // pairs per Q/K row
  const int Dp = round_up(D, kBf16TileCols);  // padded head_dim of the value/output tiles
  const int max_keys = g.keys_visible(g.Tq - 1);
  const int kt_ld = round_up(max_keys, kKeyBlock);
  constexpr int kKeyPairs = kKeyBlock / 2;

#pragma omp parallel
  {
    std::vector<uint32_t> q_pairs(static_cast<std::size_t>(kQueryBlock) * D2);  // [query][d / 2], unscaled
    // K^T [d / 2][key] and V [key / 2][d] of one (source layer, sequence, kv head) for all visible
    // keys, zero padded; packed once and reused by every query block and head of the group.
    std::vector<uint32_t> k_t(static_cast<std::size_t>(D2) * kt_ld);
    std::vector<uint32_t> v_pairs(static_cast<std::size_t>(kt_ld / 2) * Dp);
    const float* packed_of = nullptr;  // the K they hold
    std::vector<float> scores(static_cast<std::size_t>(kQueryBlock) * kKeyBlock);
    std::vector<uint32_t> p_pairs(static_cast<std::size_t>(kQueryBlock) * kKeyPairs);  // [query][key / 2]
    std::vector<float> acc(static_cast<std::size_t>(kQueryBlock) * Dp);                // unnormalised output
    SoftmaxRow rows_state[kQueryBlock];

#pragma omp for schedule(dynamic)
    for (long task = 0; task < n_tasks; ++task) {
      const ForwardTask t = forward_task(g, kQueryBlock, task);
      const int layer = p.src[t.b];
      const float* K = p.k_layers[layer] + g.kv_offset(t.b, t.h / g.group);
      const float* V = p.v_layers[layer] + g.kv_offset(t.b, t.h / g.group);
      const int rows = round_up(t.nq, kBf16TileRows);

      pack_rows(q_pairs.data(), D2, p.q + g.q_offset(t.b, t.i0, t.h), g.q_row, t.nq, D, kQueryBlock);
      if (packed_of != K) {
        pack_transposed(k_t.data(), kt_ld, K, g.kv_row, max_keys, D);
        pack_row_pairs(v_pairs.data(), Dp, V, g.kv_row, max_keys, D, kt_ld);
        packed_of = K;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(rows_state, rows_state + kQueryBlock, SoftmaxRow{});

      for (int j0 = 0; j0 < t.n_keys; j0 += kKeyBlock) {
        const int nk = std::min(kKeyBlock, t.n_keys - j0);
        const int nk2 = (nk + 1) / 2;
        // Only the key columns some query of the block sees (the diagonal tile is partly in the future).
        gemm(scores.data(), kKeyBlock, q_pairs.data(), D2, k_t.data() + j0, kt_ld, rows, round_up(nk, kBf16TileCols),
             D2, false);

        for (int i = 0; i < rows; ++i) {
          float* s = scores.data() + static_cast<std::size_t>(i) * kKeyBlock;
          uint32_t* pp = p_pairs.data() + static_cast<std::size_t>(i) * kKeyPairs;
          const int cnt = visible_in_tile(g, t, i, j0, nk);
          if (cnt <= 0) {  // this tile is entirely in query i's future
            std::fill(pp, pp + nk2, 0u);
            continue;
          }
#pragma omp simd
          for (int j = 0; j < cnt; ++j) s[j] *= g.scale;  // after the product, as the CUDA kernel scales S
          online_softmax_update(s, cnt, rows_state[i], acc.data() + static_cast<std::size_t>(i) * Dp, Dp);
          std::fill(s + cnt, s + 2 * nk2, 0.f);  // the P V product reads nk2 pairs
          for (int j = 0; j < nk2; ++j) pp[j] = bf16_pair(s[2 * j], s[2 * j + 1]);
        }
        gemm(acc.data(), Dp, p_pairs.data(), kKeyPairs, v_pairs.data() + static_cast<std::size_t>(j0 / 2) * Dp, Dp,
             rows, Dp, nk2, true);
      }
      finalize_rows(g, p, t, acc.data(), Dp, rows_state);
    }
  }
}

// With P = exp(scale S - lse), S = q . k and delta_i = dout_i . out_i (fp32):
//   dV_j += sum_i bf16(P_ij) dout_i,  dS_ij = P_ij (dout_i . v_j - delta_i),
//   dK_j += scale sum_i bf16(dS_ij) q_i,  dq_i += scale sum_j bf16(dS_ij) k_j.
void attention_backward_bf16(const AttentionBackward& p, Bf16Path path) {
  const AttentionDims g = backward_dims(p);
  if (g.empty()) return;
  const TileGemm gemm = tile_gemm_for(path, "attention_backward");
  constexpr int QB = kBackwardQueryBlock, KB = kBackwardKeyBlock;
  const int D = g.D;
  const int D2 = (D + 1) / 2;
  const int Dp = round_up(D, kBf16TileCols);  // columns of the dK/dV/dq accumulators
  const int Tqp = round_up(g.Tq, QB);          // queries, padded to whole blocks
  const int n_keys = g.keys_visible(g.Tq - 1);
  const int Kp = round_up(n_keys, KB);         // keys, padded to whole tiles
  const long n_tasks = backward_task_count(g);

#pragma omp parallel
  {
    auto buffer = [](int rows, int cols) { return std::vector<uint32_t>(static_cast<std::size_t>(rows) * cols); };
    // Per task: K and V rows ([key][d / 2]: A of K Q^T and V dout^T) and K in key pairs
    // ([key / 2][d]: B of dS K).
    std::vector<uint32_t> k_rows = buffer(Kp, D2), v_rows = buffer(Kp, D2), k_pairs = buffer(Kp / 2, Dp);
    // Per query head: Q^T, dout^T ([d / 2][query]) and Q, dout in query pairs ([query / 2][d]).
    std::vector<uint32_t> q_t = buffer(D2, Tqp), do_t = buffer(D2, Tqp);
    std::vector<uint32_t> q_pairs = buffer(Tqp / 2, Dp), do_pairs = buffer(Tqp / 2, Dp);
    std::vector<float> dq_acc(static_cast<std::size_t>(Tqp) * Dp);
    // +inf log-sum-exp makes P exactly 0 for padding queries.
    std::vector<float> lse(Tqp, std::numeric_limits<float>::infinity()), row_dot(Tqp, 0.f);
    // Per (key tile, query block): S^T, dP^T in fp32, then P^T and dS^T in query pairs
    // ([key][query / 2]: A of P^T dout and dS^T Q) and dS in key pairs ([query][key / 2]: A of dS K).
    std::vector<float> s_t(static_cast<std::size_t>(KB) * QB), dp_t(static_cast<std::size_t>(KB) * QB);
    std::vector<uint32_t> p_t = buffer(KB, QB / 2), ds_t = buffer(KB, QB / 2), ds = buffer(QB, KB / 2);
    std::vector<float> dk_acc(static_cast<std::size_t>(KB) * Dp), dv_acc(static_cast<std::size_t>(KB) * Dp);

#pragma omp for schedule(dynamic)
    for (long task = 0; task < n_tasks; ++task) {
      const auto [b, kv_head] = backward_task(g, task);
      const int layer = p.src[b];
      const std::size_t kv_off = g.kv_offset(b, kv_head);
      const float* K = p.k_layers[layer] + kv_off;
      const float* V = p.v_layers[layer] + kv_off;
      float* dK = p.dk_layers[layer] + kv_off;
      float* dV = p.dv_layers[layer] + kv_off;
      pack_rows(k_rows.data(), D2, K, g.kv_row, n_keys, D, Kp);
      pack_rows(v_rows.data(), D2, V, g.kv_row, n_keys, D, Kp);
      pack_row_pairs(k_pairs.data(), Dp, K, g.kv_row, n_keys, D, Kp);

      for (int hh = 0; hh < g.group; ++hh) {
        const int h = kv_head * g.group + hh;
        load_row_stats(g, p, b, h, row_dot.data(), lse.data());
        const float* q = p.q + g.q_offset(b, 0, h);
        const float* dout = p.dout + g.q_offset(b, 0, h);
        pack_transposed(q_t.data(), Tqp, q, g.q_row, g.Tq, D);
        pack_transposed(do_t.data(), Tqp, dout, g.q_row, g.Tq, D);
        pack_row_pairs(q_pairs.data(), Dp, q, g.q_row, g.Tq, D, Tqp);
        pack_row_pairs(do_pairs.data(), Dp, dout, g.q_row, g.Tq, D, Tqp);
        std::fill(dq_acc.begin(), dq_acc.end(), 0.f);

        for (int j0 = 0; j0 < n_keys; j0 += KB) {
          const int nk = std::min(KB, n_keys - j0);
          const int key_rows = round_up(nk, kBf16TileRows);  // >= nk + 1 when nk is odd: the last pair's 0
          std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
          std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
          const int first_query = static_cast<int>(std::max<long>(0, j0 - g.q_pos0));

          for (int i0 = first_query / QB * QB; i0 < g.Tq; i0 += QB) {
            const int nq = std::min(QB, g.Tq - i0);
            gemm(s_t.data(), QB, k_rows.data() + static_cast<std::size_t>(j0) * D2, D2, q_t.data() + i0, Tqp,
                 key_rows, QB, D2, false);  // K Q^T
            gemm(dp_t.data(), QB, v_rows.data() + static_cast<std::size_t>(j0) * D2, D2, do_t.data() + i0, Tqp,
                 key_rows, QB, D2, false);  // V dout^T

            for (int r = 0; r < key_rows; ++r) {
              float* pr = s_t.data() + static_cast<std::size_t>(r) * QB;
              float* dsr = dp_t.data() + static_cast<std::size_t>(r) * QB;
              if (r >= nk) {  // padding keys
                std::fill(pr, pr + QB, 0.f);
                std::fill(dsr, dsr + QB, 0.f);
                continue;
              }
              for (int c = 0; c < QB; c += kLanes) {
                const floatv prob =
                    fast_exp(load_vec(pr + c) * g.scale - load_vec(lse.data() + i0 + c));
                store_vec(pr + c, prob);
                store_vec(dsr + c, prob * (load_vec(dsr + c) - load_vec(row_dot.data() + i0 + c)));
              }
              // Query i0 + c sees key j0 + r from c = j0 + r - q_pos0 - i0 on.
              const long first = std::clamp<long>(j0 + r - g.q_pos0 - i0, 0, QB);
              std::fill(pr, pr + first, 0.f);
              std::fill(dsr, dsr + first, 0.f);
            }
            for (int r = 0; r < key_rows; ++r) {
              const float* pr = s_t.data() + static_cast<std::size_t>(r) * QB;
              const float* dsr = dp_t.data() + static_cast<std::size_t>(r) * QB;
              uint32_t* pt = p_t.data() + static_cast<std::size_t>(r) * (QB / 2);
              uint32_t* dst = ds_t.data() + static_cast<std::size_t>(r) * (QB / 2);
              for (int c = 0; c < QB / 2; ++c) {
                pt[c] = bf16_pair(pr[2 * c], pr[2 * c + 1]);
                dst[c] = bf16_pair(dsr[2 * c], dsr[2 * c + 1]);
              }
            }
            for (int r = 0; r < key_rows; r += 2) {
              const float* ds0 = dp_t.data() + static_cast<std::size_t>(r) * QB;
              for (int c = 0; c < QB; ++c) ds[static_cast<std::size_t>(c) * (KB / 2) + r / 2] = bf16_pair(ds0[c], ds0[QB + c]);
            }

            const int nq2 = (nq + 1) / 2;
            gemm(dv_acc.data(), Dp, p_t.data(), QB / 2, do_pairs.data() + static_cast<std::size_t>(i0 / 2) * Dp, Dp,
                 key_rows, Dp, nq2, true);  // P^T dout
            gemm(dk_acc.data(), Dp, ds_t.data(), QB / 2, q_pairs.data() + static_cast<std::size_t>(i0 / 2) * Dp, Dp,
                 key_rows, Dp, nq2, true);  // dS^T Q
            gemm(dq_acc.data() + static_cast<std::size_t>(i0) * Dp, Dp, ds.data(), KB / 2,
                 k_pairs.data() + static_cast<std::size_t>(j0 / 2) * Dp, Dp, QB, Dp, (nk + 1) / 2, true);  // dS K
          }

          for (int r = 0; r < nk; ++r) {
            float* dk = dK + (j0 + r) * g.kv_row;
            float* dv = dV + (j0 + r) * g.kv_row;
            const float* ak = dk_acc.data() + static_cast<std::size_t>(r) * Dp;
            const float* av = dv_acc.data() + static_cast<std::size_t>(r) * Dp;
#pragma omp simd
            for (int d = 0; d < D; ++d) {
              dk[d] += g.scale * ak[d];
              dv[d] += av[d];
            }
          }
        }

        for (int i = 0; i < g.Tq; ++i) {
          float* dq = p.dq + g.q_offset(b, i, h);
          const float* a = dq_acc.data() + static_cast<std::size_t>(i) * Dp;
#pragma omp simd
          for (int d = 0; d < D; ++d) dq[d] += g.scale * a[d];
        }
      }
    }
  }
}

}  // namespace kvroute::cpu
