// Routed causal attention forward on tensor cores (train.precision: bf16), flash
// style, for head_dim 64 and 128. Q, K and V are read as fp32 and rounded to bf16
// (bf16_from_float) into shared memory; scores S = Q K^T are bf16 x bf16 products
// accumulated in fp32 (WMMA 16x16x16); the online softmax runs in fp32; the
// probabilities are rounded to bf16 for P V (fp32 accumulation); out and the
// log-sum-exp are written in fp32. No [Tq, Tk] matrix reaches global memory.
// Its backward (attention_bf16_backward_cuda.cu) rounds Q/K/V the same way, so the P
// it recomputes from this forward's lse matches these scores.
//
// Block: 4 warps, a tile of 64 queries (16 rows per warp) of one (head, sequence);
// loop over key tiles of 64. Each warp owns its rows of S, P and the fp32 output
// accumulator O (kept in shared memory, rescaled by the online-softmax factor
// between tiles), so only the K/V tile loads need block-wide barriers. Two lanes
// share a row in the softmax (32 columns each, one xor shuffle to combine).
// Routing: sequence b reads the K/V base pointers table[b], table[B + b] (as the
// fp32 kernel; CudaBackend::attention_forward gathers them).
#include <cuda_bf16.h>
#include <mma.h>

#include <stdexcept>
#include <string>

#include "attention_plan.h"
#include "bf16_tile.cuh"
#include "cuda_backend.h"
#include "kvroute/bf16.h"

namespace kvroute {
namespace {

using namespace nvcuda;

constexpr int kRows = 64;        // queries per block
constexpr int kKeys = 64;        // keys per tile
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr unsigned kFullMask = 0xffffffffu;

// Shared-memory layout for head_dim D. Pitches keep every WMMA tile pointer 32-byte aligned
// (16 rows x pitch and 16-column offsets are multiples of 32 bytes) and ldm a multiple of
// 8 (bf16) or 4 (fp32) elements; the +8 / +4 padding spreads rows over banks.
template <int D>
struct Layout {
  static constexpr int kLdH = D + 8;       // sQ, sK, sV: bf16 [rows][D]
  static constexpr int kLdS = kKeys + 4;   // sS: fp32 scores [kRows][kKeys]
  static constexpr int kLdP = kKeys + 8;   // sP: bf16 probabilities [kRows][kKeys]
  static constexpr int kLdO = D + 4;       // sO: fp32 output accumulator [kRows][D]
  static constexpr std::size_t round128(std::size_t x) { return (x + 127) / 128 * 128; }
  static constexpr std::size_t q_off = 0;
  static constexpr std::size_t k_off = q_off + round128(sizeof(__nv_bfloat16) * kRows * kLdH);
  static constexpr std::size_t v_off = k_off + round128(sizeof(__nv_bfloat16) * kKeys * kLdH);
  static constexpr std::size_t s_off = v_off + round128(sizeof(__nv_bfloat16) * kKeys * kLdH);
  static constexpr std::size_t p_off = s_off + round128(sizeof(float) * kRows * kLdS);
  static constexpr std::size_t o_off = p_off + round128(sizeof(__nv_bfloat16) * kRows * kLdP);
  static constexpr std::size_t bytes = o_off + round128(sizeof(float) * kRows * kLdO);
};
static_assert(Layout<64>::bytes == attention_bf16_forward_smem_bytes(64) &&
                  Layout<128>::bytes == attention_bf16_forward_smem_bytes(128),
              "attention_plan.h must size this kernel's shared memory as it is laid out here");

template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_bf16_kernel(AttentionDims a, const float* __restrict__ q, float* const* __restrict__ table,
                                  float* __restrict__ out, float* __restrict__ lse) {
  using L = Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  auto* sQ = reinterpret_cast<__nv_bfloat16*>(smem + L::q_off);
  auto* sK = reinterpret_cast<__nv_bfloat16*>(smem + L::k_off);
  auto* sV = reinterpret_cast<__nv_bfloat16*>(smem + L::v_off);
  auto* sS = reinterpret_cast<float*>(smem + L::s_off);
  auto* sP = reinterpret_cast<__nv_bfloat16*>(smem + L::p_off);
  auto* sO = reinterpret_cast<float*>(smem + L::o_off);

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int q0 = blockIdx.x * kRows;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int kv_head = h / a.group;
  const float* K = table[b] + static_cast<std::size_t>(kv_head) * D;
  const float* V = table[a.B + b] + static_cast<std::size_t>(kv_head) * D;

  const int nq = min(kRows, a.Tq - q0);
  const int block_keys = min(a.Tk, a.q_pos0 + q0 + nq);  // the block's last row sees the most keys

  // This lane's softmax row (two lanes per row) and half of the columns.
  const int row = warp * 16 + lane / 2;
  const int half = lane % 2;
  const int qi = q0 + row;
  const bool row_valid = row < nq;
  const int visible = min(a.Tk, a.q_pos0 + qi + 1);

  load_bf16_tile<D, kThreads>(sQ, L::kLdH, q + (static_cast<std::size_t>(b) * a.Tq + q0) * a.q_row + static_cast<std::size_t>(h) * D,
                    a.q_row, kRows, nq);
  for (int idx = threadIdx.x; idx < kRows * D; idx += kThreads) sO[(idx / D) * L::kLdO + idx % D] = 0.f;

  float m = -INFINITY;  // running max and sum of this lane's row (both lanes of a row agree)
  float l = 0.f;
  __nv_bfloat16* wQ = sQ + warp * 16 * L::kLdH;
  float* wS = sS + warp * 16 * L::kLdS;
  __nv_bfloat16* wP = sP + warp * 16 * L::kLdP;
  float* wO = sO + warp * 16 * L::kLdO;

  for (int k0 = 0; k0 < block_keys; k0 += kKeys) {
    const int nk = min(kKeys, block_keys - k0);
    __syncthreads();  // every warp is done with the previous K/V tile (and sQ, sO are initialised)
    load_bf16_tile<D, kThreads>(sK, L::kLdH, K + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, kKeys, nk);
    load_bf16_tile<D, kThreads>(sV, L::kLdH, V + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, kKeys, nk);
    __syncthreads();

    // S_w [16 x 64] = Q_w [16 x D] K^T; K^T's element (d, j) is sK[j][d]: a col-major matrix_b.
    for (int n = 0; n < kKeys / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, wQ + kk * 16, L::kLdH);
        wmma::load_matrix_sync(fb, sK + n * 16 * L::kLdH + kk * 16, L::kLdH);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(wS + n * 16, acc, L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over this tile, fp32. Masked entries (causality, padding rows and keys) get p = 0.
    const float* srow = sS + row * L::kLdS + half * 32;
    float s[32];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int j = k0 + half * 32 + c;
      s[c] = (row_valid && j < visible) ? srow[c] * a.scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[c]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    float alpha = 1.f, psum = 0.f;
    __nv_bfloat16* prow = sP + row * L::kLdP + half * 32;
    if (m_new != -INFINITY) {
      alpha = expf(m - m_new);  // 0 while m is still -inf
#pragma unroll
      for (int c = 0; c < 32; ++c) {
        const float p = s[c] == -INFINITY ? 0.f : expf(s[c] - m_new);
        psum += p;
        prow[c] = __ushort_as_bfloat16(bf16_from_float(p));
      }
    } else {  // nothing visible to this row yet (padding rows)
#pragma unroll
      for (int c = 0; c < 32; ++c) prow[c] = __ushort_as_bfloat16(0);
    }
    psum += __shfl_xor_sync(kFullMask, psum, 1);
    l = l * alpha + psum;
    m = m_new;
    float* orow = sO + row * L::kLdO + half * (D / 2);
#pragma unroll 8
    for (int d = 0; d < D / 2; ++d) orow[d] *= alpha;
    __syncwarp();

    // O_w [16 x D] += P_w [16 x 64] V [64 x D].
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, wO + n * 16, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, wP + kk * 16, L::kLdP);
        wmma::load_matrix_sync(fb, sV + kk * 16 * L::kLdH + n * 16, L::kLdH);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(wO + n * 16, acc, L::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }

  if (row_valid) {
    const float* orow = sO + row * L::kLdO + half * (D / 2);
    float* o = out + (static_cast<std::size_t>(b) * a.Tq + qi) * a.q_row + static_cast<std::size_t>(h) * D + half * (D / 2);
    const float inv_l = 1.f / l;
    for (int d = 0; d < D / 2; ++d) o[d] = orow[d] * inv_l;
    if (lse && half == 0) lse[(static_cast<std::size_t>(b) * a.H + h) * a.Tq + qi] = m + logf(l);
  }
}

template <int D>
void launch(const AttentionDims& a, const float* q, float* const* table, float* out, float* lse,
            cudaStream_t stream) {
  constexpr std::size_t smem = Layout<D>::bytes;
  KVR_CUDA_CHECK(cudaFuncSetAttribute(attention_forward_bf16_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const dim3 grid((a.Tq + kRows - 1) / kRows, a.H, a.B);
  attention_forward_bf16_kernel<D><<<grid, kThreads, smem, stream>>>(a, q, table, out, lse);
  KVR_KERNEL_CHECK();
}

}  // namespace

void launch_attention_forward_bf16(const AttentionDims& a, const float* q, float* const* table, float* out,
                                   float* lse, cudaStream_t stream) {
  if (a.D == 64) {
    launch<64>(a, q, table, out, lse, stream);
  } else if (a.D == 128) {
    launch<128>(a, q, table, out, lse, stream);
  } else {
    throw std::invalid_argument("attention_forward (bf16): head_dim " + std::to_string(a.D) +
                                " has no tensor-core kernel (64 and 128 do)");
  }
}

}  // namespace kvroute
