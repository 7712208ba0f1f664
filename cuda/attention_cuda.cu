// Routed causal attention, flash style, fp32. No [Tq, Tk] matrix ever reaches
// global memory: scores live in registers and one [32 x 32] shared tile.
//
// Routing: sequence b reads K/V of its source layer src[b]. src, k_layers and
// v_layers are HOST arrays, so the host gathers the per-sequence base pointers
// (k_layers[src[b]] + b * seq_stride, likewise V, dK, dV) into a small table,
// copies it to the device in stream order (CudaBackend::upload_pointers) and
// the kernels index that table by b.
//
// Tiling: 128 threads handle a 32 x 32 tile of (query, key) pairs; thread t
// owns tile row t/4 and the 8 columns (t%4) + 4c, so the 4 threads sharing a
// row are adjacent lanes of one warp and row reductions are two xor shuffles.
// Shared tiles are padded to DM+1 floats per row (no bank conflicts).
// head_dim D <= 128 runs in a kernel instantiated for DM in {32, 64, 128}
// (the smallest DM >= D); columns D..DM-1 of every tile are zero, which leaves
// every dot product exact, and are never written back.
//
// Forward (one block per (query tile, head, sequence)): online softmax over
// key tiles, keeping running max m, running sum l and the unnormalised output
// in registers; out = acc / l, lse = m + log(l).
//
// Backward, with P = exp(scale q.k - lse), Di = dout_i . out_i,
// dS = P (dout_i . v_j - Di):
//   delta kernel   Di for every (b, h, i), one warp per row.
//   dQ kernel      one block per (query tile, head, sequence), looping over key
//                  tiles: dq_i += scale * sum_j dS_ij k_j.
//   dK/dV kernel   one block per (key tile, kv head, sequence), looping over the
//                  query heads of its GQA group and the query tiles that can see
//                  the key tile: dv_j += sum_i P_ij dout_i,
//                  dk_j += scale * sum_i dS_ij q_i.
// Determinism without atomics (the default, BackendOptions::deterministic): every
// dq element is owned by one thread of one dQ block, and every dK/dV element of
// (b, kv head, key tile) by one thread of one dK/dV block; sequences b != b'
// write disjoint slices (offset b * stride) even when they share a source layer,
// and separate attention_backward calls (layers routing into the same source)
// are ordered by the stream. All sums run in a fixed order, so results are
// bitwise reproducible. dK/dV never need atomics or a cross-block reduction:
// the routing only changes which buffer a (b, key tile) block adds into.
//
// In bf16 precision with head_dim 64 or 128 both directions run on tensor cores
// instead (attention_bf16_cuda.cu, attention_bf16_backward_cuda.cu) where the
// device gives them the shared memory they need (attention_plan.h); these fp32
// kernels serve fp32 precision, other head dims, and bf16 at head_dim 128 on GPUs
// with 99 KiB of shared memory per block (sm_86, sm_89). Training shapes in bf16 run cuDNN's
// fused attention where cuDNN is there (cudnn_attention_cuda.cu, cudnn_attention_plan.h).
//
// deterministic = false drops the dQ kernel: the dK/dV kernel, which already
// holds dS for each (key tile, query tile) pair, adds scale * dS^T K into dq
// with float atomicAdd (FlashAttention-2's scheme). That saves recomputing S
// and dP (half of the backward's dot products) but the order of the atomic
// additions, and so the last bits of dq, vary run to run. The default stays
// deterministic because a resumed run must continue bit-exactly (train
// --resume) and because the atomic path is not yet measured on hardware.
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_plan.h"
#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBQ = 32;                 // queries per tile
constexpr int kBK = 32;                 // keys per tile
constexpr int kLanes = 4;               // threads per tile row
constexpr int kThreads = kBQ * kLanes;  // 128
constexpr int kCols = kBK / kLanes;     // tile columns per thread
constexpr int kMaxHeadDim = 128;
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kBQ == kBK, "the dK/dV kernel uses the same thread layout with rows and columns swapped");

// dst[r][c] (row pitch DM+1) = src[r * stride + c] for r < n_rows and c < D, else 0; 32 rows.
template <int DM>
__device__ __forceinline__ void load_tile(float* dst, const float* src, int stride, int n_rows, int D) {
  constexpr int DP = DM + 1;
  for (int idx = threadIdx.x; idx < 32 * DM; idx += kThreads) {
    const int r = idx / DM;
    const int c = idx % DM;
    dst[r * DP + c] = (r < n_rows && c < D) ? src[static_cast<std::size_t>(r) * stride + c] : 0.f;
  }
}

// Shared memory per kernel: attention_plan.h (which the backend checks against the device).
static_assert(kBQ == 32, "attention_plan.h sizes the fp32 kernels for 32-row tiles");
template <int DM>
constexpr std::size_t forward_smem_bytes() {
  return attention_fp32_forward_smem_bytes(DM);
}
template <int DM>
constexpr std::size_t dq_smem_bytes() {
  return attention_fp32_dq_smem_bytes(DM);
}
template <int DM>
constexpr std::size_t dkdv_smem_bytes() {
  return attention_fp32_dkdv_smem_bytes(DM);
}

// table: [K base of b = 0..B-1, V base of b = 0..B-1]. grid: (ceil(Tq / kBQ), H, B).
template <int DM>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(AttentionDims a, const float* __restrict__ q, float* const* __restrict__ table,
                             float* __restrict__ out, float* __restrict__ lse) {
  constexpr int DP = DM + 1;
  constexpr int kAcc = DM / kLanes;
  extern __shared__ float smem[];
  float* sQ = smem;              // [kBQ][DP]
  float* sKV = sQ + kBQ * DP;    // [kBK][DP]: K of the tile, then V
  float* sP = sKV + kBK * DP;    // [kBQ][kBK + 1]: probabilities of the tile

  const int row = threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  const int q0 = blockIdx.x * kBQ;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int kv_head = h / a.group;
  const float* K = table[b] + kv_head * a.D;
  const float* V = table[a.B + b] + kv_head * a.D;

  const int nq = min(kBQ, a.Tq - q0);
  const int qi = q0 + row;
  const bool row_valid = row < nq;
  const int visible = min(a.Tk, a.q_pos0 + qi + 1);       // this row sees keys [0, visible)
  const int block_keys = min(a.Tk, a.q_pos0 + q0 + nq);   // the last row of the block sees the most

  load_tile<DM>(sQ, q + a.q_offset(b, q0, h), a.q_row, nq, a.D);

  float m = -INFINITY;
  float l = 0.f;
  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.f;

  for (int k0 = 0; k0 < block_keys; k0 += kBK) {
    const int nk = min(kBK, block_keys - k0);
    __syncthreads();  // everyone is done with the previous V tile and sP (and sQ is loaded)
    load_tile<DM>(sKV, K + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, nk, a.D);
    __syncthreads();

    float s[kCols];
#pragma unroll
    for (int t = 0; t < kCols; ++t) s[t] = 0.f;
#pragma unroll 4
    for (int d = 0; d < DM; ++d) {
      const float qd = sQ[row * DP + d];
#pragma unroll
      for (int t = 0; t < kCols; ++t) s[t] += qd * sKV[(lane + kLanes * t) * DP + d];
    }
    float tile_max = -INFINITY;
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int j = k0 + lane + kLanes * t;
      s[t] = (row_valid && j < visible) ? s[t] * a.scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[t]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 2));
    const float m_new = fmaxf(m, tile_max);
    float alpha = 1.f;
    float psum = 0.f;
    if (m_new != -INFINITY) {
      alpha = expf(m - m_new);  // 0 while m is still -inf
#pragma unroll
      for (int t = 0; t < kCols; ++t) {
        s[t] = s[t] == -INFINITY ? 0.f : expf(s[t] - m_new);
        psum += s[t];
      }
    } else {  // nothing visible to this row yet (only padding rows)
#pragma unroll
      for (int t = 0; t < kCols; ++t) s[t] = 0.f;
    }
    psum += __shfl_xor_sync(kFullMask, psum, 1);
    psum += __shfl_xor_sync(kFullMask, psum, 2);
    l = l * alpha + psum;
    m = m_new;
#pragma unroll
    for (int t = 0; t < kCols; ++t) sP[row * (kBK + 1) + lane + kLanes * t] = s[t];
#pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] *= alpha;

    __syncthreads();  // K reads done, sP complete
    load_tile<DM>(sKV, V + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, nk, a.D);
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kBK; ++c) {
      const float pc = sP[row * (kBK + 1) + c];
#pragma unroll
      for (int i = 0; i < kAcc; ++i) acc[i] += pc * sKV[c * DP + lane + kLanes * i];
    }
  }

  if (row_valid) {
    float* o = out + a.q_offset(b, qi, h);
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int d = lane + kLanes * i;
      if (d < a.D) o[d] = acc[i] / l;
    }
    if (lse && lane == 0) lse[a.lse_offset(b, h, qi)] = m + logf(l);
  }
}

// delta[b, h, i] = dot(dout[b, i, h, :], out[b, i, h, :]); one warp per row of [B, Tq, H].
__global__ void attention_delta_kernel(AttentionDims a, const float* __restrict__ out, const float* __restrict__ dout,
                                       float* __restrict__ delta) {
  const long rows = static_cast<long>(a.B) * a.Tq * a.H;
  const long r = static_cast<long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const float* o = out + r * a.D;
  const float* g = dout + r * a.D;
  float s = 0.f;
  for (int d = lane; d < a.D; d += 32) s += o[d] * g[d];
  for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(kFullMask, s, k);
  if (lane == 0) {
    const int h = static_cast<int>(r % a.H);
    const int i = static_cast<int>((r / a.H) % a.Tq);
    const int b = static_cast<int>(r / (static_cast<long>(a.H) * a.Tq));
    delta[a.lse_offset(b, h, i)] = s;
  }
}

// dq += scale * sum_j dS_ij k_j. table: [K..., V..., dK..., dV...]. grid: (ceil(Tq / kBQ), H, B).
template <int DM>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(AttentionDims a, const float* __restrict__ q, float* const* __restrict__ table,
                                 const float* __restrict__ dout, const float* __restrict__ lse,
                                 const float* __restrict__ delta, float* __restrict__ dq) {
  constexpr int DP = DM + 1;
  constexpr int kAcc = DM / kLanes;
  extern __shared__ float smem[];
  float* sQ = smem;              // [kBQ][DP]
  float* sdO = sQ + kBQ * DP;    // [kBQ][DP]
  float* sK = sdO + kBQ * DP;    // [kBK][DP]
  float* sV = sK + kBK * DP;     // [kBK][DP]
  float* sS = sV + kBK * DP;     // [kBQ][kBK + 1]: dS of the tile

  const int row = threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  const int q0 = blockIdx.x * kBQ;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int kv_head = h / a.group;
  const float* K = table[b] + kv_head * a.D;
  const float* V = table[a.B + b] + kv_head * a.D;

  const int nq = min(kBQ, a.Tq - q0);
  const int qi = q0 + row;
  const bool row_valid = row < nq;
  const int visible = min(a.Tk, a.q_pos0 + qi + 1);
  const int block_keys = min(a.Tk, a.q_pos0 + q0 + nq);
  const float row_lse = row_valid ? lse[a.lse_offset(b, h, qi)] : 0.f;
  const float row_delta = row_valid ? delta[a.lse_offset(b, h, qi)] : 0.f;

  load_tile<DM>(sQ, q + a.q_offset(b, q0, h), a.q_row, nq, a.D);
  load_tile<DM>(sdO, dout + a.q_offset(b, q0, h), a.q_row, nq, a.D);

  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.f;

  for (int k0 = 0; k0 < block_keys; k0 += kBK) {
    const int nk = min(kBK, block_keys - k0);
    __syncthreads();  // previous sK / sS readers are done
    load_tile<DM>(sK, K + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, nk, a.D);
    load_tile<DM>(sV, V + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, nk, a.D);
    __syncthreads();

    float s[kCols], dp[kCols];
#pragma unroll
    for (int t = 0; t < kCols; ++t) s[t] = dp[t] = 0.f;
#pragma unroll 4
    for (int d = 0; d < DM; ++d) {
      const float qd = sQ[row * DP + d];
      const float od = sdO[row * DP + d];
#pragma unroll
      for (int t = 0; t < kCols; ++t) {
        const int c = lane + kLanes * t;
        s[t] += qd * sK[c * DP + d];
        dp[t] += od * sV[c * DP + d];
      }
    }
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int c = lane + kLanes * t;
      float ds = 0.f;
      if (row_valid && k0 + c < visible) {
        const float p = expf(s[t] * a.scale - row_lse);
        ds = p * (dp[t] - row_delta);
      }
      sS[row * (kBK + 1) + c] = ds;
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kBK; ++c) {
      const float ds = sS[row * (kBK + 1) + c];
#pragma unroll
      for (int i = 0; i < kAcc; ++i) acc[i] += ds * sK[c * DP + lane + kLanes * i];
    }
  }

  if (row_valid) {
    float* g = dq + a.q_offset(b, qi, h);
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int d = lane + kLanes * i;
      if (d < a.D) g[d] += a.scale * acc[i];
    }
  }
}

// dK/dV of one key tile. table: [K..., V..., dK..., dV...]. grid: (ceil(Tk / kBK), Hkv, B).
// Thread layout as in the other kernels with the roles swapped: thread t owns
// key row t/4 of the tile and query columns (t%4) + 4c.
// With kFuseDq it also adds each tile's dq contribution with atomics (dq otherwise unused).
template <int DM, bool kFuseDq>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(AttentionDims a, const float* __restrict__ q, float* const* __restrict__ table,
                                   const float* __restrict__ dout, const float* __restrict__ lse,
                                   const float* __restrict__ delta, float* __restrict__ dq) {
  constexpr int DP = DM + 1;
  constexpr int kAcc = DM / kLanes;
  extern __shared__ float smem[];
  float* sK = smem;                    // [kBK][DP]
  float* sV = sK + kBK * DP;           // [kBK][DP]
  float* sQ = sV + kBK * DP;           // [kBQ][DP]
  float* sdO = sQ + kBQ * DP;          // [kBQ][DP]
  float* sP = sdO + kBQ * DP;          // [kBK][kBQ + 1]
  float* sdS = sP + kBK * (kBQ + 1);   // [kBK][kBQ + 1]
  float* sL = sdS + kBK * (kBQ + 1);   // [kBQ] lse of the query tile
  float* sD = sL + kBQ;                // [kBQ] delta of the query tile

  const int krow = threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  const int k0 = blockIdx.x * kBK;
  const int kv_head = blockIdx.y;
  const int b = blockIdx.z;
  const std::size_t head_off = static_cast<std::size_t>(kv_head) * a.D;
  const float* K = table[b] + head_off;
  const float* V = table[a.B + b] + head_off;
  float* dK = table[2 * a.B + b] + head_off;
  float* dV = table[3 * a.B + b] + head_off;

  const int nk = min(kBK, a.Tk - k0);
  const int kj = k0 + krow;
  const bool key_valid = krow < nk;
  load_tile<DM>(sK, K + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, nk, a.D);
  load_tile<DM>(sV, V + static_cast<std::size_t>(k0) * a.kv_row, a.kv_row, nk, a.D);

  float acc_k[kAcc], acc_v[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc_k[i] = acc_v[i] = 0.f;

  // Query i sees key k0 only if i >= k0 - q_pos0: earlier query tiles are skipped.
  const int first_query = max(0, k0 - a.q_pos0);
  const int first_tile = (first_query / kBQ) * kBQ;
  for (int hh = 0; hh < a.group; ++hh) {
    const int h = kv_head * a.group + hh;
    for (int q0 = first_tile; q0 < a.Tq; q0 += kBQ) {
      const int nq = min(kBQ, a.Tq - q0);
      __syncthreads();  // previous sQ / sdO / sP / sdS readers are done (and sK / sV are loaded)
      load_tile<DM>(sQ, q + a.q_offset(b, q0, h), a.q_row, nq, a.D);
      load_tile<DM>(sdO, dout + a.q_offset(b, q0, h), a.q_row, nq, a.D);
      if (threadIdx.x < kBQ) {
        const bool ok = static_cast<int>(threadIdx.x) < nq;
        sL[threadIdx.x] = ok ? lse[a.lse_offset(b, h, q0 + threadIdx.x)] : 0.f;
        sD[threadIdx.x] = ok ? delta[a.lse_offset(b, h, q0 + threadIdx.x)] : 0.f;
      }
      __syncthreads();

      float s[kCols], dp[kCols];
#pragma unroll
      for (int t = 0; t < kCols; ++t) s[t] = dp[t] = 0.f;
#pragma unroll 4
      for (int d = 0; d < DM; ++d) {
        const float kd = sK[krow * DP + d];
        const float vd = sV[krow * DP + d];
#pragma unroll
        for (int t = 0; t < kCols; ++t) {
          const int r = lane + kLanes * t;
          s[t] += sQ[r * DP + d] * kd;
          dp[t] += sdO[r * DP + d] * vd;
        }
      }
#pragma unroll
      for (int t = 0; t < kCols; ++t) {
        const int r = lane + kLanes * t;
        float p = 0.f, ds = 0.f;
        if (key_valid && r < nq && kj <= a.q_pos0 + q0 + r) {
          p = expf(s[t] * a.scale - sL[r]);
          ds = p * (dp[t] - sD[r]);
        }
        sP[krow * (kBQ + 1) + r] = p;
        sdS[krow * (kBQ + 1) + r] = ds;
      }
      __syncthreads();
#pragma unroll 4
      for (int r = 0; r < kBQ; ++r) {
        const float p = sP[krow * (kBQ + 1) + r];
        const float ds = sdS[krow * (kBQ + 1) + r];
#pragma unroll
        for (int i = 0; i < kAcc; ++i) {
          const int d = lane + kLanes * i;
          acc_v[i] += p * sdO[r * DP + d];
          acc_k[i] += ds * sQ[r * DP + d];
        }
      }
      if constexpr (kFuseDq) {
        // dq_r += scale * sum_j dS[j][r] k_j, with this thread on query row krow of the tile
        // (the same index as a key row above) and columns lane + 4i. sdS and sK are only
        // read here; the next iteration's first __syncthreads orders these reads before
        // sdS is rewritten. Rows of keys past the tile end hold dS = 0 and K = 0.
        const int r = krow;
        if (r < nq) {
          float acc_q[kAcc];
#pragma unroll
          for (int i = 0; i < kAcc; ++i) acc_q[i] = 0.f;
#pragma unroll 4
          for (int j = 0; j < kBK; ++j) {
            const float ds = sdS[j * (kBQ + 1) + r];
#pragma unroll
            for (int i = 0; i < kAcc; ++i) acc_q[i] += ds * sK[j * DP + lane + kLanes * i];
          }
          float* g = dq + a.q_offset(b, q0 + r, h);
#pragma unroll
          for (int i = 0; i < kAcc; ++i) {
            const int d = lane + kLanes * i;
            if (d < a.D) atomicAdd(g + d, a.scale * acc_q[i]);
          }
        }
      }
    }
  }

  if (key_valid) {
    float* gk = dK + static_cast<std::size_t>(kj) * a.kv_row;
    float* gv = dV + static_cast<std::size_t>(kj) * a.kv_row;
#pragma unroll
    for (int i = 0; i < kAcc; ++i) {
      const int d = lane + kLanes * i;
      if (d < a.D) {
        gk[d] += a.scale * acc_k[i];
        gv[d] += acc_v[i];
      }
    }
  }
}

// ---- host side ----
// The limits of these kernels, beyond the front's checks (kvroute/attention_dims.h).
void require_kernel_limits(const AttentionDims& a, const char* op) {
  auto require = [op](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
  };
  require(a.D <= kMaxHeadDim, "head_dim " + std::to_string(a.D) + " exceeds the CUDA kernels' maximum of " +
                                  std::to_string(kMaxHeadDim));
  require(a.H <= 65535 && a.Hkv <= 65535 && a.B <= 65535, "B or head count exceeds grid limits");
}

// Appends layers[src[b]] + b * kv_seq for every b (the front checked that none is null).
void gather(std::vector<void*>& table, const float* const* layers, const int32_t* src, const AttentionDims& a) {
  for (int b = 0; b < a.B; ++b)
    table.push_back(const_cast<float*>(layers[src[b]]) + static_cast<std::size_t>(b) * a.kv_seq);
}

template <int DM>
void launch_forward(const AttentionDims& a, const float* q, float* const* table, float* out, float* lse,
                    cudaStream_t stream) {
  constexpr std::size_t smem = forward_smem_bytes<DM>();
  KVR_CUDA_CHECK(cudaFuncSetAttribute(attention_forward_kernel<DM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const dim3 grid((a.Tq + kBQ - 1) / kBQ, a.H, a.B);
  attention_forward_kernel<DM><<<grid, kThreads, smem, stream>>>(a, q, table, out, lse);
  KVR_KERNEL_CHECK();
}

template <int DM>
void launch_backward(const AttentionDims& a, const float* q, float* const* table, const float* dout, const float* lse,
                     const float* delta, float* dq, bool deterministic, cudaStream_t stream) {
  constexpr std::size_t smem_dkdv = dkdv_smem_bytes<DM>();
  const dim3 grid_k((a.Tk + kBK - 1) / kBK, a.Hkv, a.B);
  if (!deterministic) {
    KVR_CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dkdv_kernel<DM, true>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_dkdv)));
    attention_backward_dkdv_kernel<DM, true>
        <<<grid_k, kThreads, smem_dkdv, stream>>>(a, q, table, dout, lse, delta, dq);
    KVR_KERNEL_CHECK();
    return;
  }
  constexpr std::size_t smem_dq = dq_smem_bytes<DM>();
  KVR_CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dq_kernel<DM>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_dq)));
  KVR_CUDA_CHECK(cudaFuncSetAttribute(attention_backward_dkdv_kernel<DM, false>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_dkdv)));
  const dim3 grid_q((a.Tq + kBQ - 1) / kBQ, a.H, a.B);
  attention_backward_dq_kernel<DM><<<grid_q, kThreads, smem_dq, stream>>>(a, q, table, dout, lse, delta, dq);
  KVR_KERNEL_CHECK();
  attention_backward_dkdv_kernel<DM, false>
      <<<grid_k, kThreads, smem_dkdv, stream>>>(a, q, table, dout, lse, delta, nullptr);
  KVR_KERNEL_CHECK();
}

}  // namespace

void CudaBackend::attention_forward(const AttentionForward& p) {
  const AttentionDims a = forward_dims(p);
  if (a.empty()) return;
  require_kernel_limits(a, "attention_forward");
  const AttentionPath path = attention_path(a);
  if (path == AttentionPath::Cudnn) return attention_forward_cudnn(p, a);
  std::vector<void*> ptrs;
  ptrs.reserve(2 * static_cast<std::size_t>(a.B));
  gather(ptrs, p.k_layers, p.src, a);
  gather(ptrs, p.v_layers, p.src, a);
  auto* table = reinterpret_cast<float* const*>(upload_pointers(ptrs));
  if (path == AttentionPath::Bf16Kernels) {
    launch_attention_forward_bf16(a, p.q, table, p.out, p.lse, stream_);
    return;
  }
  if (a.D <= 32) {
    launch_forward<32>(a, p.q, table, p.out, p.lse, stream_);
  } else if (a.D <= 64) {
    launch_forward<64>(a, p.q, table, p.out, p.lse, stream_);
  } else {
    launch_forward<128>(a, p.q, table, p.out, p.lse, stream_);
  }
}

void CudaBackend::attention_backward(const AttentionBackward& p) {
  const AttentionDims a = backward_dims(p);
  if (a.empty()) return;
  require_kernel_limits(a, "attention_backward");
  // The path of this shape's forward: the choice depends on the shape alone.
  const AttentionPath path = attention_path(a);
  if (path == AttentionPath::Cudnn) return attention_backward_cudnn(p, a);
  std::vector<void*> ptrs;
  ptrs.reserve(4 * static_cast<std::size_t>(a.B));
  gather(ptrs, p.k_layers, p.src, a);
  gather(ptrs, p.v_layers, p.src, a);
  gather(ptrs, p.dk_layers, p.src, a);
  gather(ptrs, p.dv_layers, p.src, a);
  auto* table = reinterpret_cast<float* const*>(upload_pointers(ptrs));

  const std::size_t n_rows = static_cast<std::size_t>(a.B) * a.Tq * a.H;
  auto* delta = static_cast<float*>(scratch(kScratchAttnDelta, n_rows * sizeof(float)));
  constexpr int kDeltaWarps = 8;
  const unsigned delta_blocks = static_cast<unsigned>((n_rows + kDeltaWarps - 1) / kDeltaWarps);
  attention_delta_kernel<<<delta_blocks, 32 * kDeltaWarps, 0, stream_>>>(a, p.out, p.dout, delta);
  KVR_KERNEL_CHECK();

  if (path == AttentionPath::Bf16Kernels) {
    launch_attention_backward_bf16(a, p.q, table, p.dout, p.lse, delta, p.dq, stream_);
    return;
  }

  const bool det = options_.deterministic;
  if (a.D <= 32) {
    launch_backward<32>(a, p.q, table, p.dout, p.lse, delta, p.dq, det, stream_);
  } else if (a.D <= 64) {
    launch_backward<64>(a, p.q, table, p.dout, p.lse, delta, p.dq, det, stream_);
  } else {
    launch_backward<128>(a, p.q, table, p.dout, p.lse, delta, p.dq, det, stream_);
  }
}

}  // namespace kvroute
