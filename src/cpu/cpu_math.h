// Vectorised float exp for the CPU kernels (softmax over the vocabulary,
// attention scores, SiLU). std::exp never vectorises without -ffast-math, and
// GCC will not if-convert the range clamps of a scalar exp under the default
// -ftrapping-math, so this is written on GCC vector types (floatv: 8 floats
// with AVX, 4 without) with a scalar twin for loop tails.
// Cephes polynomial, within ~2 ulp of expf on [-87, 88]; exactly 0 below
// -87.3 (and for -inf), +inf above ~88.72, NaN stays NaN.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace kvroute::cpu {
// Internal linkage: TUs built with and without AVX must not share copies of
// functions whose vector arguments are passed differently.
namespace {

// One AVX register where the build targets AVX, one SSE/NEON register otherwise
// (a 32-byte vector without AVX would change the calling convention).
#ifdef __AVX__
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float floatv __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t intv __attribute__((vector_size(kLanes * sizeof(int32_t))));

[[gnu::always_inline]] inline floatv load_vec(const float* p) {
  floatv v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
[[gnu::always_inline]] inline void store_vec(float* p, floatv v) { std::memcpy(p, &v, sizeof v); }
[[gnu::always_inline]] inline float lane_sum(floatv v) {
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

[[gnu::always_inline]] inline int32_t convert_to_int(float x) { return static_cast<int32_t>(x); }
[[gnu::always_inline]] inline intv convert_to_int(floatv x) { return __builtin_convertvector(x, intv); }

// F is float or floatv.
template <typename F>
[[gnu::always_inline]] inline F fast_exp(F x) {
  const F low = F{} + -87.3f;
  const F high = F{} + 89.0f;          // exp(89) overflows float: the result becomes +inf
  const F round = F{} + 12582912.0f;   // 1.5 * 2^23: adding and subtracting it rounds to an integer
  F xc = x < low ? low : x;
  xc = xc > high ? high : xc;
  const F n = (xc * 1.44269504088896341f + round) - round;
  xc -= n * 0.693359375f;
  xc -= n * -2.12194440e-4f;
  const F z = xc * xc;
  F y = F{} + 1.9875691500e-4f;
  y = y * xc + 1.3981999507e-3f;
  y = y * xc + 8.3334519073e-3f;
  y = y * xc + 4.1665795894e-2f;
  y = y * xc + 1.6666665459e-1f;
  y = y * xc + 5.0000001201e-1f;
  y = y * z + xc + 1.0f;
  // 2^n as two factors so that n == 128 does not overflow the exponent field.
  const auto ni = convert_to_int(n);
  const auto half = ni >> 1;
  const F scale1 = std::bit_cast<F>((half + 127) << 23);
  const F scale2 = std::bit_cast<F>((ni - half + 127) << 23);
  const F keep = x >= low ? F{} + 1.0f : F{};  // 0 below the range; NaN * 0 stays NaN
  return y * scale1 * scale2 * keep;
}

// sum_j exp(x[j] - shift)
inline float sum_exp_shifted(const float* x, int n, float shift) {
  floatv acc{};
  int j = 0;
  for (; j + kLanes <= n; j += kLanes) acc += fast_exp(load_vec(x + j) - shift);
  float sum = lane_sum(acc);
  for (; j < n; ++j) sum += fast_exp(x[j] - shift);
  return sum;
}

// dst[j] = scale * exp(src[j] - shift); dst may alias src. Returns sum_j exp(src[j] - shift).
inline float exp_shifted(float* dst, const float* src, int n, float shift, float scale = 1.0f) {
  floatv acc{};
  int j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const floatv e = fast_exp(load_vec(src + j) - shift);
    acc += e;
    store_vec(dst + j, e * scale);
  }
  float sum = lane_sum(acc);
  for (; j < n; ++j) {
    const float e = fast_exp(src[j] - shift);
    sum += e;
    dst[j] = e * scale;
  }
  return sum;
}

}  // namespace
}  // namespace kvroute::cpu
