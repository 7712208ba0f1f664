// What a RoPE op needs to know besides the shape: the base frequency and an optional
// rescaling of the per-dimension inverse frequencies (model.rope_scaling). One inline
// function, rope_inv_freq, serves the CPU op and the CUDA kernel alike.
#pragma once

#include <math.h>

#include <string>

#if defined(__CUDACC__)
#define KVROUTE_HOST_DEVICE __host__ __device__
#else
#define KVROUTE_HOST_DEVICE
#endif

namespace kvroute {

enum class RopeScaling : int {
  None = 0,    // inv_freq(i) = theta^(-2i/D)
  Llama3 = 1,  // Llama 3.1: long wavelengths slowed down by `factor`, a smooth ramp between
};

struct RopeSpec {
  double theta = 10000.0;
  RopeScaling scaling = RopeScaling::None;
  // Llama3 only (the Hugging Face `rope_scaling` keys factor, low_freq_factor,
  // high_freq_factor, original_max_position_embeddings).
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int original_context = 8192;
};

// Inverse frequency of rotation pair i (0 <= i < D/2) for head_dim D, in double.
// Llama3, with wavelength w = 2 pi / f and the original context n:
//   w < n / high_freq_factor            f            (high frequencies: unchanged)
//   w > n / low_freq_factor             f / factor   (low frequencies: interpolated)
//   otherwise                           (1 - s) f / factor + s f,
//                                       s = (n / w - low_freq_factor) / (high_freq_factor - low_freq_factor)
KVROUTE_HOST_DEVICE inline double rope_inv_freq(const RopeSpec& spec, int i, int D) {
  const double f = pow(spec.theta, -2.0 * i / D);
  if (spec.scaling != RopeScaling::Llama3) return f;
  const double n = spec.original_context;
  const double wavelen = 2.0 * 3.14159265358979323846 / f;
  if (wavelen < n / spec.high_freq_factor) return f;
  if (wavelen > n / spec.low_freq_factor) return f / spec.factor;
  const double s = (n / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor);
  return (1.0 - s) * f / spec.factor + s * f;
}

// Why spec cannot be used ("theta must be > 0", ...), or "" when it can.
inline std::string rope_spec_problem(const RopeSpec& s) {
  if (!(s.theta > 0) || !isfinite(s.theta)) return "theta must be a finite number > 0";
  if (s.scaling == RopeScaling::None) return "";
  if (s.scaling != RopeScaling::Llama3) return "unknown RoPE scaling";
  if (!(s.factor > 0)) return "llama3 scaling: factor must be > 0";
  if (!(s.low_freq_factor > 0)) return "llama3 scaling: low_freq_factor must be > 0";
  if (!(s.high_freq_factor > s.low_freq_factor)) return "llama3 scaling: high_freq_factor must be > low_freq_factor";
  if (s.original_context < 1) return "llama3 scaling: original_context must be >= 1";
  return "";
}

}  // namespace kvroute
