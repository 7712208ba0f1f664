// Routed causal attention in bf16 on the CPU (train.precision: bf16, head_dim 64 and 128 through
// CpuBackend; any head_dim when called directly): the twin of the CUDA tensor-core kernels
// (cuda/attention_bf16_cuda.cu, cuda/attention_bf16_backward_cuda.cu), with their rounding
// points, so the CPU backend stays the numerical oracle of the CUDA one in bf16 too:
//   forward   Q, K, V rounded to bf16 (nearest even; Q before the scale); S = Q K^T as exact
//             bf16 products summed in fp32, times scale; online softmax in fp32 over tiles of
//             64 keys; the probabilities (relative to the running max) rounded to bf16 for
//             P V, summed in fp32; the row sums, out and the log-sum-exp in fp32.
//   backward  Q, K, V, dout rounded; S and dP = dout V^T as above; P = exp(scale S - lse) and
//             dS = P (dP - delta) in fp32 (delta = dout . out in fp32 from the fp32 out and
//             dout), then P and dS rounded to bf16 for dV = P^T dout, dK = scale dS^T Q and
//             dq = scale dS K, summed in fp32.
// Only the summation order (and expf against the CPU's polynomial exp) differs from CUDA.
// Same parallel scheme as the fp32 kernels (attention_cpu.cpp): no atomics, a fixed
// summation order, bitwise deterministic whatever the thread count.
#pragma once

#include "cpu/bf16_matmul_cpu.h"
#include "kvroute/attention.h"

namespace kvroute::cpu {

// path Native: AVX512-BF16 dot products (std::invalid_argument on a CPU without them);
// Emulated: the same products on fp32 vectors (bf16_tile_gemm.h).
void attention_forward_bf16(const AttentionForward& p, Bf16Path path);
void attention_backward_bf16(const AttentionBackward& p, Bf16Path path);

// Whether this CPU can run the Native path.
bool attention_bf16_native_available();

}  // namespace kvroute::cpu
