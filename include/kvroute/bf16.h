// bfloat16 <-> float conversions shared by host code and CUDA kernels (KVR_HOST_DEVICE),
// so the per-element math the GPU runs is unit-tested on the CPU (tests/test_bf16_math.cpp).
// A bf16 value is the top 16 bits of an IEEE float: sign, 8 exponent bits, 7 mantissa bits.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVR_HOST_DEVICE __host__ __device__
#else
#define KVR_HOST_DEVICE
#endif

namespace kvroute {

KVR_HOST_DEVICE inline uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

KVR_HOST_DEVICE inline float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// Round to nearest, ties to even (as __float2bfloat16_rn). Finite values beyond the largest
// bf16 round to +-inf; NaN stays NaN (quiet, sign kept); +-0, +-inf and subnormals are exact
// or rounded like any other value.
KVR_HOST_DEVICE inline uint16_t bf16_from_float(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  const uint32_t round = 0x7fffu + ((u >> 16) & 1u);  // half an ulp, plus one when the kept lsb is odd (ties to even)
  return static_cast<uint16_t>((u + round) >> 16);
}

KVR_HOST_DEVICE inline float float_from_bf16(uint16_t h) { return float_from_bits(static_cast<uint32_t>(h) << 16); }

}  // namespace kvroute
