// Routed causal attention backward on tensor cores (train.precision: bf16), for
// head_dim 64 and 128, after the tensor-core forward (attention_bf16_cuda.cu).
// Q, K, V and dout are rounded to bf16 as they are loaded into shared memory; the
// scores S and dP are bf16 x bf16 products summed in fp32 (WMMA 16x16x16), so P =
// exp(scale S - lse) matches the forward's lse; P and dS = P (dP - delta) are
// rounded to bf16 for the three gradient products, which accumulate in fp32
// fragments. delta = dout . out comes from the fp32 delta kernel.
//
// Deterministic, no atomics (whatever train.deterministic says):
//   dK/dV kernel  one block per (key tile of 64, kv head, sequence); each of its 4 warps
//                 owns 16 keys and loops over the query heads of its GQA group and the
//                 query tiles that can see the key tile: dV += P^T dO, dK += scale dS^T Q.
//                 The block adds its tile into the sequence's slice of the source layer's
//                 dK/dV buffers (table[2B + b], table[3B + b]): one owner per element.
//   dQ kernel     one block per (query tile of 64, head, sequence), 16 queries per warp,
//                 looping over the visible key tiles: dq += scale dS K.
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

constexpr int kTile = 64;  // queries or keys per tile
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kFrag = 16;

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Shared memory, both kernels: four bf16 [64][D] tiles (t0..t3), two fp32 [64][64] score
// tiles (f0, f1), two bf16 [64][64] probability tiles (p0, p1), and 64-entry lse and delta.
// After the main loop f0..f1 are reused as an fp32 [64][D] staging tile for the result.
// Pitches: WMMA needs 32-byte aligned tile pointers and ldm a multiple of 8 (bf16) / 4 (fp32).
template <int D>
struct Layout {
  static constexpr int kLdH = D + 8;
  static constexpr int kLdF = kTile + 4;
  static constexpr int kLdP = kTile + 8;
  static constexpr int kLdO = D + 4;
  static constexpr std::size_t round128(std::size_t x) { return (x + 127) / 128 * 128; }
  static constexpr std::size_t tile_h = round128(sizeof(__nv_bfloat16) * kTile * kLdH);
  static constexpr std::size_t tile_f = round128(sizeof(float) * kTile * kLdF);
  static constexpr std::size_t tile_p = round128(sizeof(__nv_bfloat16) * kTile * kLdP);
  static constexpr std::size_t t_off = 0;                      // t0..t3
  static constexpr std::size_t f_off = t_off + 4 * tile_h;     // f0, f1 (then the staging tile)
  static constexpr std::size_t p_off = f_off + 2 * tile_f;     // p0, p1
  static constexpr std::size_t row_off = p_off + 2 * tile_p;   // lse[64], delta[64]
  static constexpr std::size_t bytes = row_off + round128(2 * sizeof(float) * kTile);
  static_assert(sizeof(float) * kTile * kLdO <= 2 * tile_f, "the staging tile must fit in f0..f1");
};
static_assert(Layout<64>::bytes == attention_bf16_backward_smem_bytes(64) &&
                  Layout<128>::bytes == attention_bf16_backward_smem_bytes(128),
              "attention_plan.h must size these kernels' shared memory as it is laid out here");

template <int D>
struct Tiles {
  __nv_bfloat16* t[4];
  float* f[2];
  __nv_bfloat16* p[2];
  float* lse;
  float* delta;
  float* stage;
  __device__ explicit Tiles(unsigned char* smem) {
    using L = Layout<D>;
    for (int i = 0; i < 4; ++i) t[i] = reinterpret_cast<__nv_bfloat16*>(smem + L::t_off + i * L::tile_h);
    for (int i = 0; i < 2; ++i) f[i] = reinterpret_cast<float*>(smem + L::f_off + i * L::tile_f);
    for (int i = 0; i < 2; ++i) p[i] = reinterpret_cast<__nv_bfloat16*>(smem + L::p_off + i * L::tile_p);
    lse = reinterpret_cast<float*>(smem + L::row_off);
    delta = lse + kTile;
    stage = f[0];
  }
};

// out[16 x 64] (fp32, pitch kLdF) = A[16 x D] (rows of a, pitch kLdH) times B^T, where B is
// [64 x D] row-major (pitch kLdH): B^T's element (d, j) = B[j][d] is a col-major matrix_b.
template <int D>
__device__ __forceinline__ void rows_times_transpose(float* out, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  using L = Layout<D>;
#pragma unroll
  for (int n = 0; n < kTile / kFrag; ++n) {
    FragAcc acc;
    wmma::fill_fragment(acc, 0.f);
#pragma unroll
    for (int kk = 0; kk < D / kFrag; ++kk) {
      FragA fa;
      FragBCol fb;
      wmma::load_matrix_sync(fa, a + kk * kFrag, L::kLdH);
      wmma::load_matrix_sync(fb, b + n * kFrag * L::kLdH + kk * kFrag, L::kLdH);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + n * kFrag, acc, L::kLdF, wmma::mem_row_major);
  }
}

// acc[n] (16 x 16 blocks of a 16 x D result) += P[16 x 64] (bf16, pitch kLdP) times B[64 x D]
// (bf16 row-major, pitch kLdH).
template <int D>
__device__ __forceinline__ void accumulate_rows_times(FragAcc (&acc)[D / kFrag], const __nv_bfloat16* p,
                                                      const __nv_bfloat16* b) {
  using L = Layout<D>;
#pragma unroll
  for (int kk = 0; kk < kTile / kFrag; ++kk) {
    FragA fa;
    wmma::load_matrix_sync(fa, p + kk * kFrag, L::kLdP);
#pragma unroll
    for (int n = 0; n < D / kFrag; ++n) {
      FragBRow fb;
      wmma::load_matrix_sync(fb, b + kk * kFrag * L::kLdH + n * kFrag, L::kLdH);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

// Adds scale * acc (this warp's 16 rows x D) into global rows: dst + row * row_stride for the
// rows with row < n_rows (row counted within the block's 64). Goes through the warp's rows of
// the staging tile; two lanes per row, D/2 columns each.
template <int D>
__device__ __forceinline__ void add_rows_to_global(FragAcc (&acc)[D / kFrag], float* stage, float* dst,
                                                   std::size_t row_stride, int n_rows, float scale) {
  using L = Layout<D>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* wstage = stage + warp * kFrag * L::kLdO;
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n) wmma::store_matrix_sync(wstage + n * kFrag, acc[n], L::kLdO, wmma::mem_row_major);
  __syncwarp();
  const int row = warp * kFrag + lane / 2;
  const int c0 = (lane % 2) * (D / 2);
  if (row < n_rows) {
    const float* src = stage + row * L::kLdO + c0;
    float* g = dst + static_cast<std::size_t>(row) * row_stride + c0;
    for (int d = 0; d < D / 2; ++d) g[d] += scale * src[d];
  }
  __syncwarp();
}

// grid: (ceil(Tk / 64), Hkv, B). table: [K..., V..., dK..., dV...].
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_bf16_kernel(AttentionDims a, const float* __restrict__ q, float* const* __restrict__ table,
                                        const float* __restrict__ dout, const float* __restrict__ lse,
                                        const float* __restrict__ delta) {
  using L = Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  const Tiles<D> s(smem);
  __nv_bfloat16 *sK = s.t[0], *sV = s.t[1], *sQ = s.t[2], *sdO = s.t[3];
  float *sST = s.f[0], *sdPT = s.f[1];         // S^T, dP^T: [key][query]
  __nv_bfloat16 *sPT = s.p[0], *sdST = s.p[1];  // P^T, dS^T (bf16)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k0 = blockIdx.x * kTile;
  const int kv_head = blockIdx.y;
  const int b = blockIdx.z;
  const std::size_t head_off = static_cast<std::size_t>(kv_head) * D;
  const float* K = table[b] + head_off;
  const float* V = table[a.B + b] + head_off;
  float* dK = table[2 * a.B + b] + head_off;
  float* dV = table[3 * a.B + b] + head_off;
  const int nk = min(kTile, a.Tk - k0);

  load_bf16_tile<D, kThreads>(sK, L::kLdH, K + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, kTile, nk);
  load_bf16_tile<D, kThreads>(sV, L::kLdH, V + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, kTile, nk);

  FragAcc acc_dk[D / kFrag], acc_dv[D / kFrag];
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n) {
    wmma::fill_fragment(acc_dk[n], 0.f);
    wmma::fill_fragment(acc_dv[n], 0.f);
  }
  // This lane's element-wise row (a key) and half of the 64 query columns.
  const int row = warp * kFrag + lane / 2;
  const int half = lane % 2;
  const int kj = k0 + row;
  const bool key_valid = row < nk;

  // Query i sees key k0 only if i >= k0 - q_pos0: earlier query tiles are skipped.
  const int first_query = max(0, k0 - a.q_pos0);
  const int first_tile = (first_query / kTile) * kTile;
  for (int hh = 0; hh < a.group; ++hh) {
    const int h = kv_head * a.group + hh;
    for (int q0 = first_tile; q0 < a.Tq; q0 += kTile) {
      const int nq = min(kTile, a.Tq - q0);
      __syncthreads();  // every warp is done with the previous query tile (and sK / sV are loaded)
      const std::size_t qoff = (static_cast<std::size_t>(b) * a.Tq + q0) * a.q_row + static_cast<std::size_t>(h) * D;
      load_bf16_tile<D, kThreads>(sQ, L::kLdH, q + qoff, a.q_row, kTile, nq);
      load_bf16_tile<D, kThreads>(sdO, L::kLdH, dout + qoff, a.q_row, kTile, nq);
      if (threadIdx.x < kTile) {
        const int i = threadIdx.x;
        const std::size_t r = (static_cast<std::size_t>(b) * a.H + h) * a.Tq + q0 + i;
        s.lse[i] = i < nq ? lse[r] : 0.f;
        s.delta[i] = i < nq ? delta[r] : 0.f;
      }
      __syncthreads();

      rows_times_transpose<D>(sST + warp * kFrag * L::kLdF, sK + warp * kFrag * L::kLdH, sQ);   // K_w Q^T
      rows_times_transpose<D>(sdPT + warp * kFrag * L::kLdF, sV + warp * kFrag * L::kLdH, sdO); // V_w dO^T
      __syncwarp();
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const int qc = half * 32 + c;
        float p = 0.f, ds = 0.f;
        if (key_valid && qc < nq && kj <= a.q_pos0 + q0 + qc) {
          p = expf(sST[row * L::kLdF + qc] * a.scale - s.lse[qc]);
          ds = p * (sdPT[row * L::kLdF + qc] - s.delta[qc]);
        }
        sPT[row * L::kLdP + qc] = __ushort_as_bfloat16(bf16_from_float(p));
        sdST[row * L::kLdP + qc] = __ushort_as_bfloat16(bf16_from_float(ds));
      }
      __syncwarp();
      accumulate_rows_times<D>(acc_dv, sPT + warp * kFrag * L::kLdP, sdO);  // dV_w += P^T_w dO
      accumulate_rows_times<D>(acc_dk, sdST + warp * kFrag * L::kLdP, sQ);  // dK_w += dS^T_w Q
    }
  }
  __syncthreads();  // the staging tile overlays f0/f1, which other warps may still be reading
  float* gk = dK + static_cast<std::size_t>(k0) * a.kv_row;
  float* gv = dV + static_cast<std::size_t>(k0) * a.kv_row;
  add_rows_to_global<D>(acc_dv, s.stage, gv, a.kv_row, nk, 1.f);
  add_rows_to_global<D>(acc_dk, s.stage, gk, a.kv_row, nk, a.scale);
}

// grid: (ceil(Tq / 64), H, B). table: [K..., V..., dK..., dV...].
template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_bf16_kernel(AttentionDims a, const float* __restrict__ q, float* const* __restrict__ table,
                                      const float* __restrict__ dout, const float* __restrict__ lse,
                                      const float* __restrict__ delta, float* __restrict__ dq) {
  using L = Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  const Tiles<D> s(smem);
  __nv_bfloat16 *sQ = s.t[0], *sdO = s.t[1], *sK = s.t[2], *sV = s.t[3];
  float *sS = s.f[0], *sdP = s.f[1];
  __nv_bfloat16* sdS = s.p[0];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = blockIdx.x * kTile;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int kv_head = h / a.group;
  const float* K = table[b] + static_cast<std::size_t>(kv_head) * D;
  const float* V = table[a.B + b] + static_cast<std::size_t>(kv_head) * D;
  const int nq = min(kTile, a.Tq - q0);
  const int block_keys = min(a.Tk, a.q_pos0 + q0 + nq);

  const std::size_t qoff = (static_cast<std::size_t>(b) * a.Tq + q0) * a.q_row + static_cast<std::size_t>(h) * D;
  load_bf16_tile<D, kThreads>(sQ, L::kLdH, q + qoff, a.q_row, kTile, nq);
  load_bf16_tile<D, kThreads>(sdO, L::kLdH, dout + qoff, a.q_row, kTile, nq);
  if (threadIdx.x < kTile) {
    const int i = threadIdx.x;
    const std::size_t r = (static_cast<std::size_t>(b) * a.H + h) * a.Tq + q0 + i;
    s.lse[i] = i < nq ? lse[r] : 0.f;
    s.delta[i] = i < nq ? delta[r] : 0.f;
  }

  FragAcc acc_dq[D / kFrag];
#pragma unroll
  for (int n = 0; n < D / kFrag; ++n) wmma::fill_fragment(acc_dq[n], 0.f);
  const int row = warp * kFrag + lane / 2;  // this lane's query (element-wise step)
  const int half = lane % 2;
  const int qi = q0 + row;
  const bool row_valid = row < nq;
  const int visible = min(a.Tk, a.q_pos0 + qi + 1);

  for (int k0 = 0; k0 < block_keys; k0 += kTile) {
    const int nk = min(kTile, block_keys - k0);
    __syncthreads();  // every warp is done with the previous K/V tile (and sQ, sdO, lse, delta are loaded)
    load_bf16_tile<D, kThreads>(sK, L::kLdH, K + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, kTile, nk);
    load_bf16_tile<D, kThreads>(sV, L::kLdH, V + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, kTile, nk);
    __syncthreads();

    rows_times_transpose<D>(sS + warp * kFrag * L::kLdF, sQ + warp * kFrag * L::kLdH, sK);    // Q_w K^T
    rows_times_transpose<D>(sdP + warp * kFrag * L::kLdF, sdO + warp * kFrag * L::kLdH, sV);  // dO_w V^T
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int kc = half * 32 + c;
      float ds = 0.f;
      if (row_valid && k0 + kc < visible) {
        const float p = expf(sS[row * L::kLdF + kc] * a.scale - s.lse[row]);
        ds = p * (sdP[row * L::kLdF + kc] - s.delta[row]);
      }
      sdS[row * L::kLdP + kc] = __ushort_as_bfloat16(bf16_from_float(ds));
    }
    __syncwarp();
    accumulate_rows_times<D>(acc_dq, sdS + warp * kFrag * L::kLdP, sK);  // dQ_w += dS_w K
  }
  __syncthreads();  // the staging tile overlays sS/sdP
  add_rows_to_global<D>(acc_dq, s.stage, dq + qoff, a.q_row, nq, a.scale);
}

template <int D>
void launch(const AttentionDims& a, const float* q, float* const* table, const float* dout, const float* lse,
            const float* delta, float* dq, cudaStream_t stream) {
  constexpr std::size_t smem = Layout<D>::bytes;
  KVR_CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dq_bf16_kernel<D>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  KVR_CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dkdv_bf16_kernel<D>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid_q((a.Tq + kTile - 1) / kTile, a.H, a.B);
  attention_backward_dq_bf16_kernel<D><<<grid_q, kThreads, smem, stream>>>(a, q, table, dout, lse, delta, dq);
  KVR_KERNEL_CHECK();
  const dim3 grid_k((a.Tk + kTile - 1) / kTile, a.Hkv, a.B);
  attention_backward_dkdv_bf16_kernel<D><<<grid_k, kThreads, smem, stream>>>(a, q, table, dout, lse, delta);
  KVR_KERNEL_CHECK();
}

}  // namespace

void launch_attention_backward_bf16(const AttentionDims& a, const float* q, float* const* table,
                                    const float* dout, const float* lse, const float* delta, float* dq,
                                    cudaStream_t stream) {
  if (a.D == 64) {
    launch<64>(a, q, table, dout, lse, delta, dq, stream);
  } else if (a.D == 128) {
    launch<128>(a, q, table, dout, lse, delta, dq, stream);
  } else {
    throw std::invalid_argument("attention_backward (bf16): head_dim " + std::to_string(a.D) +
                                " has no tensor-core kernel (64 and 128 do)");
  }
}

}  // namespace kvroute
