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
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/cpu_math.h"
#include "cpu/tile_gemm.h"

namespace kvroute {
namespace {

constexpr int kQueryBlock = 32;
constexpr int kKeyBlock = 64;
static_assert(kQueryBlock % cpu::kTileRows == 0 && kKeyBlock % cpu::kTileRows == 0);
static_assert(kKeyBlock % cpu::kTileCols == 0);

// Shape with its derived strides, validated once per call.
struct Geometry {
  int B, Tq, Tk, H, Hkv, D, group;
  long q_pos0;
  float scale;
  std::size_t q_row;   // elements between time steps in q/out/dq: H * D
  std::size_t kv_row;  // elements between time steps in K/V: Hkv * D
  std::size_t kv_seq;  // elements between sequences in K/V

  bool empty() const { return B == 0 || Tq == 0; }
  // Query i (relative) sees keys [0, keys_visible(i)).
  int keys_visible(long i) const { return static_cast<int>(std::min<long>(Tk, q_pos0 + i + 1)); }
  std::size_t q_offset(int b, int i, int h) const {
    return (static_cast<std::size_t>(b) * Tq + i) * q_row + static_cast<std::size_t>(h) * D;
  }
  std::size_t kv_offset(int b, int kv_head) const {
    return static_cast<std::size_t>(b) * kv_seq + static_cast<std::size_t>(kv_head) * D;
  }
  std::size_t lse_offset(int b, int h, int i) const {
    return (static_cast<std::size_t>(b) * H + h) * Tq + i;
  }
};

Geometry make_geometry(const AttentionShape& s, const int32_t* src, const float* const* k_layers,
                       const float* const* v_layers, const char* op) {
  using cpu::require;
  require(s.B >= 0 && s.Tq >= 0, op, "B and Tq must be >= 0");
  Geometry g{};
  g.B = s.B;
  g.Tq = s.Tq;
  g.Tk = s.Tk;
  g.H = s.n_heads;
  g.Hkv = s.n_kv_heads;
  g.D = s.head_dim;
  g.q_pos0 = s.q_pos0;
  g.scale = s.scale;
  if (g.empty()) return g;
  require(s.Tk >= 1, op, "Tk must be >= 1");
  require(s.n_heads >= 1 && s.n_kv_heads >= 1 && s.head_dim >= 1, op, "heads and head_dim must be >= 1");
  require(s.n_heads % s.n_kv_heads == 0, op,
          "n_kv_heads (" + std::to_string(s.n_kv_heads) + ") must divide n_heads (" +
              std::to_string(s.n_heads) + ")");
  require(s.q_pos0 >= 0, op, "q_pos0 must be >= 0");
  require(std::isfinite(s.scale) && s.scale != 0.f, op,
          "shape.scale must be set (usually 1/sqrt(head_dim))");
  g.group = s.n_heads / s.n_kv_heads;
  g.q_row = static_cast<std::size_t>(g.H) * g.D;
  g.kv_row = static_cast<std::size_t>(g.Hkv) * g.D;
  const std::size_t dense_seq = static_cast<std::size_t>(g.Tk) * g.kv_row;
  require(s.kv_seq_stride == 0 || s.kv_seq_stride >= static_cast<long>(dense_seq), op,
          "kv_seq_stride " + std::to_string(s.kv_seq_stride) + " is smaller than Tk * n_kv_heads * head_dim");
  g.kv_seq = s.kv_seq_stride ? static_cast<std::size_t>(s.kv_seq_stride) : dense_seq;
  require(src && k_layers && v_layers, op, "null src / k_layers / v_layers");
  for (int b = 0; b < g.B; ++b) {
    require(src[b] >= 0, op, "negative source layer for sequence " + std::to_string(b));
    require(k_layers[src[b]] && v_layers[src[b]], op,
            "null K/V for source layer " + std::to_string(src[b]));
  }
  return g;
}

int round_up(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }

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

// dst[c * rows + r] = src[r * cols + c]
void transpose(float* dst, const float* src, int rows, int cols) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
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
  const Geometry g = make_geometry(p.shape, p.src, p.k_layers, p.v_layers, "attention_forward");
  if (g.empty()) return;
  cpu::require(p.q && p.out, "attention_forward", "null q or out");
  const int n_qblocks = (g.Tq + kQueryBlock - 1) / kQueryBlock;
  const long n_tasks = static_cast<long>(g.B) * g.H * n_qblocks;
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
    float row_max[kQueryBlock], row_sum[kQueryBlock];

#pragma omp for schedule(dynamic)
    for (long task = 0; task < n_tasks; ++task) {
      // Latest query blocks (most keys) first, for load balance.
      const int qb = n_qblocks - 1 - static_cast<int>(task % n_qblocks);
      const int h = static_cast<int>((task / n_qblocks) % g.H);
      const int b = static_cast<int>(task / n_qblocks / g.H);
      const int layer = p.src[b];
      const float* K = p.k_layers[layer] + g.kv_offset(b, h / g.group);
      const float* V = p.v_layers[layer] + g.kv_offset(b, h / g.group);
      const int i0 = qb * kQueryBlock;
      const int nq = std::min(kQueryBlock, g.Tq - i0);
      const int rows = round_up(nq, cpu::kTileRows);
      const int n_keys = g.keys_visible(i0 + nq - 1);

      load_rows(q_tile.data(), D, p.q + g.q_offset(b, i0, h), g.q_row, nq, D, kQueryBlock, g.scale);
      if (k_t_of != K) {
        load_transposed(k_t.data(), kt_ld, K, g.kv_row, max_keys, D);
        k_t_of = K;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(row_max, row_max + kQueryBlock, -std::numeric_limits<float>::infinity());
      std::fill(row_sum, row_sum + kQueryBlock, 0.f);

      for (int j0 = 0; j0 < n_keys; j0 += kKeyBlock) {
        const int nk = std::min(kKeyBlock, n_keys - j0);
        const float* v_rows = V + j0 * g.kv_row;
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
          const int cnt = i < nq ? std::min(nk, g.keys_visible(i0 + i) - j0) : 0;
          if (cnt <= 0) {  // this tile is entirely in query i's future
            std::fill(s, s + kKeyBlock, 0.f);
            continue;
          }
          float tile_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : tile_max)
          for (int j = 0; j < cnt; ++j) tile_max = s[j] > tile_max ? s[j] : tile_max;
          const float new_max = std::max(row_max[i], tile_max);
          const float correction = cpu::fast_exp(row_max[i] - new_max);  // 0 on the first tile
          const float tile_sum = cpu::exp_shifted(s, s, cnt, new_max);
          std::fill(s + cnt, s + kKeyBlock, 0.f);
          row_sum[i] = row_sum[i] * correction + tile_sum;
          row_max[i] = new_max;
          float* o = acc.data() + static_cast<std::size_t>(i) * Dp;
#pragma omp simd
          for (int d = 0; d < Dp; ++d) o[d] *= correction;
        }
        cpu::tile_gemm(acc.data(), Dp, scores.data(), kKeyBlock, v_rows, static_cast<int>(v_ld), rows, Dp, nk);
      }

      for (int i = 0; i < nq; ++i) {
        const float inv = 1.0f / row_sum[i];
        const float* o = acc.data() + static_cast<std::size_t>(i) * Dp;
        float* dst = p.out + g.q_offset(b, i0 + i, h);
#pragma omp simd
        for (int d = 0; d < D; ++d) dst[d] = o[d] * inv;
        if (p.lse) p.lse[g.lse_offset(b, h, i0 + i)] = row_max[i] + std::log(row_sum[i]);
      }
    }
  }
}

// With P = exp(scale * q.k - lse) and Di = dot(dout_i, out_i):
//   dV_j += sum_i P_ij dout_i,  dS_ij = scale * P_ij (dout_i . v_j - Di),
//   dq_i += sum_j dS_ij k_j,  dK_j += sum_i dS_ij q_i.
// Loops: key tile (its dK/dV accumulate in registers-sized tiles), then the
// query heads of the group, then query blocks that can see the tile.
void CpuBackend::attention_backward(const AttentionBackward& p) {
  const Geometry g = make_geometry(p.shape, p.src, p.k_layers, p.v_layers, "attention_backward");
  if (g.empty()) return;
  cpu::require(p.q && p.out && p.lse && p.dout, "attention_backward", "null q, out, lse or dout");
  cpu::require(p.dq && p.dk_layers && p.dv_layers, "attention_backward", "null dq, dk_layers or dv_layers");
  for (int b = 0; b < g.B; ++b)
    cpu::require(p.dk_layers[p.src[b]] && p.dv_layers[p.src[b]], "attention_backward",
                 "null dK/dV for source layer " + std::to_string(p.src[b]));
  const int D = g.D;
  const int Dp = round_up(D, cpu::kTileCols);
  const long n_tasks = static_cast<long>(g.B) * g.Hkv;
  const int n_keys = g.keys_visible(g.Tq - 1);
  constexpr int QB = kQueryBlock, KB = kKeyBlock;

#pragma omp parallel
  {
    auto buffer = [](int rows, int cols) { return std::vector<float>(static_cast<std::size_t>(rows) * cols); };
    std::vector<float> k_t = buffer(D, KB), v_t = buffer(D, KB), k_rows = buffer(KB, Dp);
    std::vector<float> dk_acc = buffer(KB, Dp), dv_acc = buffer(KB, Dp);
    std::vector<float> q_blk = buffer(QB, Dp), do_blk = buffer(QB, Dp), dq_blk = buffer(QB, Dp);
    std::vector<float> prob = buffer(QB, KB), dscore = buffer(QB, KB);  // P and dS, [query, key]
    std::vector<float> prob_t = buffer(KB, QB), dscore_t = buffer(KB, QB);
    std::vector<float> row_dot = buffer(g.group, g.Tq);  // Di per (head in group, query)

#pragma omp for schedule(dynamic)
    for (long task = 0; task < n_tasks; ++task) {
      const int b = static_cast<int>(task / g.Hkv);
      const int kv_head = static_cast<int>(task % g.Hkv);
      const int layer = p.src[b];
      const std::size_t kv_off = g.kv_offset(b, kv_head);
      const float* K = p.k_layers[layer] + kv_off;
      const float* V = p.v_layers[layer] + kv_off;
      float* dK = p.dk_layers[layer] + kv_off;
      float* dV = p.dv_layers[layer] + kv_off;

      for (int hh = 0; hh < g.group; ++hh) {
        const int h = kv_head * g.group + hh;
        for (int i = 0; i < g.Tq; ++i) {
          const float* o = p.out + g.q_offset(b, i, h);
          const float* go = p.dout + g.q_offset(b, i, h);
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int d = 0; d < D; ++d) s += o[d] * go[d];
          row_dot[static_cast<std::size_t>(hh) * g.Tq + i] = s;
        }
      }

      for (int j0 = 0; j0 < n_keys; j0 += KB) {
        const int nk = std::min(KB, n_keys - j0);
        const int key_rows = round_up(nk, cpu::kTileRows);
        load_transposed(k_t.data(), KB, K + j0 * g.kv_row, g.kv_row, nk, D);
        load_transposed(v_t.data(), KB, V + j0 * g.kv_row, g.kv_row, nk, D);
        load_rows(k_rows.data(), Dp, K + j0 * g.kv_row, g.kv_row, nk, D, KB);
        std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
        std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
        const int first_query = static_cast<int>(std::max<long>(0, j0 - g.q_pos0));

        for (int hh = 0; hh < g.group; ++hh) {
          const int h = kv_head * g.group + hh;
          for (int i0 = first_query / QB * QB; i0 < g.Tq; i0 += QB) {
            const int nq = std::min(QB, g.Tq - i0);
            const int rows = round_up(nq, cpu::kTileRows);
            load_rows(q_blk.data(), Dp, p.q + g.q_offset(b, i0, h), g.q_row, nq, D, QB);
            load_rows(do_blk.data(), Dp, p.dout + g.q_offset(b, i0, h), g.q_row, nq, D, QB);
            std::fill(prob.begin(), prob.end(), 0.f);
            std::fill(dscore.begin(), dscore.end(), 0.f);
            cpu::tile_gemm(prob.data(), KB, q_blk.data(), Dp, k_t.data(), KB, rows, KB, D);
            cpu::tile_gemm(dscore.data(), KB, do_blk.data(), Dp, v_t.data(), KB, rows, KB, D);  // dout . v

            for (int i = 0; i < rows; ++i) {
              float* pr = prob.data() + static_cast<std::size_t>(i) * KB;
              float* ds = dscore.data() + static_cast<std::size_t>(i) * KB;
              const int cnt = i < nq ? std::min(nk, g.keys_visible(i0 + i) - j0) : 0;
              if (cnt <= 0) {
                std::fill(pr, pr + KB, 0.f);
                std::fill(ds, ds + KB, 0.f);
                continue;
              }
              const float lse = p.lse[g.lse_offset(b, h, i0 + i)];
              const float di = row_dot[static_cast<std::size_t>(hh) * g.Tq + i0 + i];
#pragma omp simd
              for (int j = 0; j < cnt; ++j) pr[j] *= g.scale;
              cpu::exp_shifted(pr, pr, cnt, lse);
              std::fill(pr + cnt, pr + KB, 0.f);
#pragma omp simd
              for (int j = 0; j < KB; ++j) ds[j] = pr[j] * (ds[j] - di) * g.scale;
            }

            transpose(prob_t.data(), prob.data(), QB, KB);
            transpose(dscore_t.data(), dscore.data(), QB, KB);
            cpu::tile_gemm(dv_acc.data(), Dp, prob_t.data(), QB, do_blk.data(), Dp, key_rows, Dp, nq);
            cpu::tile_gemm(dk_acc.data(), Dp, dscore_t.data(), QB, q_blk.data(), Dp, key_rows, Dp, nq);
            std::fill(dq_blk.begin(), dq_blk.end(), 0.f);
            cpu::tile_gemm(dq_blk.data(), Dp, dscore.data(), KB, k_rows.data(), Dp, rows, Dp, nk);
            add_rows(p.dq + g.q_offset(b, i0, h), g.q_row, dq_blk.data(), Dp, nq, D);
          }
        }

        add_rows(dK + j0 * g.kv_row, g.kv_row, dk_acc.data(), Dp, nk, D);
        add_rows(dV + j0 * g.kv_row, g.kv_row, dv_acc.data(), Dp, nk, D);
      }
    }
  }
}

}  // namespace kvroute
