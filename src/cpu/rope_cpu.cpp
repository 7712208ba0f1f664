// Rotary position embedding, rotate-half pairing: element i rotates with i + D/2
// by angle pos * rope_inv_freq(spec, i, D) (rope.h: theta^(-2i/D), optionally rescaled).
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"

namespace kvroute {
namespace {

bool same_spec(const RopeSpec& a, const RopeSpec& b) {
  return a.theta == b.theta && a.scaling == b.scaling && a.factor == b.factor &&
         a.low_freq_factor == b.low_freq_factor && a.high_freq_factor == b.high_freq_factor &&
         a.original_context == b.original_context;
}

// cos/sin of pos * inv_freq(i) for positions pos0..pos0+T-1, [T, D/2]. Training rotates
// q, k and their gradients with the same (spec, D, pos0, T) in every layer and step, so
// the last table is kept (one per thread: ops may run on several threads at once).
struct RopeTable {
  RopeSpec spec;
  int D = 0, pos0 = -1, T = -1;
  std::vector<float> cos, sin;

  const RopeTable& update(const RopeSpec& spec_, int D_, int pos0_, int T_) {
    if (same_spec(spec_, spec) && D_ == D && pos0_ == pos0 && T_ == T) return *this;
    const int half = D_ / 2;
    cos.resize(static_cast<std::size_t>(T_) * half);
    sin.resize(cos.size());
    for (int i = 0; i < half; ++i) {
      const double freq = rope_inv_freq(spec_, i, D_);
      for (int t = 0; t < T_; ++t) {
        const double angle = static_cast<double>(pos0_ + t) * freq;  // double: pos * freq can be large
        cos[static_cast<std::size_t>(t) * half + i] = static_cast<float>(std::cos(angle));
        sin[static_cast<std::size_t>(t) * half + i] = static_cast<float>(std::sin(angle));
      }
    }
    spec = spec_, D = D_, pos0 = pos0_, T = T_;
    return *this;
  }
};

// Rotates x[B,T,H,D] in place; inverse applies the inverse rotation (sin negated).
void rope_rotate(float* x, int B, int T, int H, int D, int pos0, const RopeSpec& spec, bool inverse, const char* op) {
  cpu::require(B >= 0 && T >= 0 && H >= 0 && D > 0, op, "bad shape");
  cpu::require(D % 2 == 0, op, "head_dim must be even, got " + std::to_string(D));
  cpu::require(pos0 >= 0, op, "pos0 must be >= 0");
  cpu::require(rope_spec_problem(spec).empty(), op, rope_spec_problem(spec));
  if (B == 0 || T == 0 || H == 0) return;
  thread_local RopeTable cache;
  const RopeTable& table = cache.update(spec, D, pos0, T);
  const int half = D / 2;
  const float sign = inverse ? -1.0f : 1.0f;
  const long rows = static_cast<long>(B) * T;
#pragma omp parallel for schedule(static) if (static_cast<std::size_t>(rows) * H * D >= cpu::kParallelMinElements)
  for (long row = 0; row < rows; ++row) {
    const int t = static_cast<int>(row % T);
    const float* c = table.cos.data() + static_cast<std::size_t>(t) * half;
    const float* s = table.sin.data() + static_cast<std::size_t>(t) * half;
    for (int h = 0; h < H; ++h) {
      float* x1 = x + (static_cast<std::size_t>(row) * H + h) * D;
      float* x2 = x1 + half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const float a = x1[i], b = x2[i], si = sign * s[i];
        x1[i] = a * c[i] - b * si;
        x2[i] = a * si + b * c[i];
      }
    }
  }
}

}  // namespace

void CpuBackend::rope_forward(float* x, int B, int T, int H, int D, int pos0, const RopeSpec& rope) {
  rope_rotate(x, B, T, H, D, pos0, rope, false, "rope_forward");
}

void CpuBackend::rope_backward(float* dx, int B, int T, int H, int D, int pos0, const RopeSpec& rope) {
  rope_rotate(dx, B, T, H, D, pos0, rope, true, "rope_backward");
}

}  // namespace kvroute
