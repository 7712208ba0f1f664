// Which attention kernels the CUDA backend runs, decided on the host from the device's
// shared-memory limit per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) and head_dim.
// Plain C++ (no CUDA headers), so tests/test_attention_plan.cpp checks it on the CPU.
//
// The tensor-core kernels (attention_bf16_cuda.cu, attention_bf16_backward_cuda.cu) keep
// whole 64-row bf16 tiles and fp32 score/output tiles in shared memory: at head_dim 128 the
// forward needs 110 KiB and the backward 120.5 KiB per block, more than the 99 KiB an sm_86
// or sm_89 GPU (RTX 30xx/40xx, A10, L4, L40S) allows; sm_80 allows 163 KiB and sm_90 227 KiB.
// Where a direction does not fit, both directions run the fp32 kernels (attention_cuda.cu,
// at most 73 KiB), so the backward always recomputes P exactly as its forward computed the
// log-sum-exp; the backend says so once per head_dim on stderr.
#pragma once

#include <cstddef>
#include <string>

#include "kvroute/attention.h"

namespace kvroute {

namespace attention_plan_detail {
constexpr std::size_t round128(std::size_t x) { return (x + 127) / 128 * 128; }
constexpr std::size_t kBf16 = 2, kFloat = 4;
constexpr int kBf16Tile = 64;  // rows (queries or keys) per tensor-core tile
constexpr int kFp32Tile = 32;  // rows per fp32 tile
}  // namespace attention_plan_detail

// Dynamic shared memory of the tensor-core forward for head_dim D (attention_bf16_cuda.cu's
// Layout<D>::bytes, which static_asserts the equality): bf16 Q, K, V tiles [64][D + 8],
// fp32 scores [64][68], bf16 probabilities [64][72], fp32 output [64][D + 4].
constexpr std::size_t attention_bf16_forward_smem_bytes(int D) {
  using namespace attention_plan_detail;
  const std::size_t rows = kBf16Tile, ld_h = D + 8, ld_o = D + 4;
  return 3 * round128(kBf16 * rows * ld_h) + round128(kFloat * rows * (kBf16Tile + 4)) +
         round128(kBf16 * rows * (kBf16Tile + 8)) + round128(kFloat * rows * ld_o);
}

// The tensor-core backward's (both of its kernels; attention_bf16_backward_cuda.cu's
// Layout<D>::bytes): four bf16 tiles [64][D + 8], two fp32 [64][68], two bf16 [64][72],
// and 64 lse and 64 delta values.
constexpr std::size_t attention_bf16_backward_smem_bytes(int D) {
  using namespace attention_plan_detail;
  const std::size_t rows = kBf16Tile;
  return 4 * round128(kBf16 * rows * (D + 8)) + 2 * round128(kFloat * rows * (kBf16Tile + 4)) +
         2 * round128(kBf16 * rows * (kBf16Tile + 8)) + round128(2 * kFloat * kBf16Tile);
}

// The fp32 kernels (attention_cuda.cu), instantiated for DM = 32, 64 or 128 (the smallest
// DM >= head_dim): forward, dQ and dK/dV, each padded to DM + 1 floats per row.
constexpr std::size_t attention_fp32_forward_smem_bytes(int DM) {
  using namespace attention_plan_detail;
  return kFloat * (2 * kFp32Tile * (DM + 1) + kFp32Tile * (kFp32Tile + 1));
}
constexpr std::size_t attention_fp32_dq_smem_bytes(int DM) {
  using namespace attention_plan_detail;
  return kFloat * (4 * kFp32Tile * (DM + 1) + kFp32Tile * (kFp32Tile + 1));
}
constexpr std::size_t attention_fp32_dkdv_smem_bytes(int DM) {
  using namespace attention_plan_detail;
  return kFloat * (4 * kFp32Tile * (DM + 1) + 2 * kFp32Tile * (kFp32Tile + 1) + 2 * kFp32Tile);
}

// The instantiation of the fp32 kernels for head_dim (1..128): 32, 64 or 128.
constexpr int attention_fp32_instance(int head_dim) { return head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : 128; }

// The most shared memory any fp32 kernel takes at head_dim (the dK/dV kernel's).
constexpr std::size_t attention_fp32_smem_bytes(int head_dim) {
  const int DM = attention_fp32_instance(head_dim);
  const std::size_t f = attention_fp32_forward_smem_bytes(DM), q = attention_fp32_dq_smem_bytes(DM),
                    k = attention_fp32_dkdv_smem_bytes(DM);
  return f > q ? (f > k ? f : k) : (q > k ? q : k);
}

// Head dims with a tensor-core kernel: attention_bf16_head_dim, kvroute/attention.h.

struct AttentionKernelChoice {
  bool tensor_cores = false;  // run the bf16 kernels (else the fp32 ones)
  // Non-empty when bf16 precision wanted the tensor-core kernels at this head_dim but the
  // device cannot give them their shared memory: what to tell the user.
  std::string fallback;
  // Non-empty when not even the fp32 kernels fit (no sm_80+ GPU): the error to throw.
  std::string error;
};

// bf16: train.precision is bf16. smem_optin_limit: the device's
// cudaDevAttrMaxSharedMemoryPerBlockOptin in bytes. head_dim: 1..128.
inline AttentionKernelChoice choose_attention_kernel(bool bf16, int head_dim, std::size_t smem_optin_limit) {
  AttentionKernelChoice c;
  const std::size_t fp32_bytes = attention_fp32_smem_bytes(head_dim);
  if (fp32_bytes > smem_optin_limit) {
    c.error = "attention: head_dim " + std::to_string(head_dim) + " needs " + std::to_string(fp32_bytes) +
              " bytes of shared memory per block; this GPU allows " + std::to_string(smem_optin_limit) +
              " (kvroute's CUDA backend needs an sm_80 or newer GPU)";
    return c;
  }
  if (!bf16 || !attention_bf16_head_dim(head_dim)) return c;
  const std::size_t fwd = attention_bf16_forward_smem_bytes(head_dim), bwd = attention_bf16_backward_smem_bytes(head_dim);
  if (fwd <= smem_optin_limit && bwd <= smem_optin_limit) {
    c.tensor_cores = true;
    return c;
  }
  c.fallback = "attention: the bf16 tensor-core kernels at head_dim " + std::to_string(head_dim) + " need " +
               std::to_string(fwd) + " (forward) and " + std::to_string(bwd) +
               " (backward) bytes of shared memory per block, this GPU allows " + std::to_string(smem_optin_limit) +
               ": attention runs in the fp32 kernels instead (slower; matmuls stay bf16)";
  return c;
}

}  // namespace kvroute
