// Shared-memory tile loads for the tensor-core attention kernels: fp32 from global memory,
// rounded to bf16 (bf16_from_float, kvroute/bf16.h) as they are stored.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>

#include "kvroute/bf16.h"

namespace kvroute {

// dst[r][c] (row pitch ld) = bf16(src[r * stride + c]) for r < n_rows, else 0; rows x D,
// loaded by the kThreads threads of the block.
template <int D, int kThreads>
__device__ __forceinline__ void load_bf16_tile(__nv_bfloat16* dst, int ld, const float* src, int stride, int rows,
                                               int n_rows) {
  for (int idx = threadIdx.x; idx < rows * D; idx += kThreads) {
    const int r = idx / D;
    const int c = idx % D;
    const float x = r < n_rows ? src[static_cast<std::size_t>(r) * stride + c] : 0.f;
    dst[r * ld + c] = __ushort_as_bfloat16(bf16_from_float(x));
  }
}

}  // namespace kvroute
