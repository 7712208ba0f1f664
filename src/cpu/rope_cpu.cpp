// Rotary position embedding, rotate-half pairing: element i rotates with i + D/2
// by angle pos * theta^(-2i/D).
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"

namespace kvroute {
namespace {

// Rotates x[B,T,H,D] in place; direction -1 applies the inverse rotation.
void rope_rotate(float* x, int B, int T, int H, int D, int pos0, float theta, int direction, const char* op) {
  cpu::require(B >= 0 && T >= 0 && H >= 0 && D > 0, op, "bad shape");
  cpu::require(D % 2 == 0, op, "head_dim must be even, got " + std::to_string(D));
  cpu::require(pos0 >= 0, op, "pos0 must be >= 0");
  cpu::require(theta > 0.f, op, "theta must be > 0");
  const int half = D / 2;
  // cos/sin table [T, D/2]; angles in double since pos * freq can be large.
  std::vector<float> cos_t(static_cast<std::size_t>(T) * half), sin_t(cos_t.size());
  for (int i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * i / D);
    for (int t = 0; t < T; ++t) {
      const double angle = static_cast<double>(pos0 + t) * freq;
      cos_t[static_cast<std::size_t>(t) * half + i] = static_cast<float>(std::cos(angle));
      sin_t[static_cast<std::size_t>(t) * half + i] = static_cast<float>(direction * std::sin(angle));
    }
  }
  const long rows = static_cast<long>(B) * T;
#pragma omp parallel for schedule(static)
  for (long row = 0; row < rows; ++row) {
    const int t = static_cast<int>(row % T);
    const float* c = cos_t.data() + static_cast<std::size_t>(t) * half;
    const float* s = sin_t.data() + static_cast<std::size_t>(t) * half;
    for (int h = 0; h < H; ++h) {
      float* x1 = x + (static_cast<std::size_t>(row) * H + h) * D;
      float* x2 = x1 + half;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = a * s[i] + b * c[i];
      }
    }
  }
}

}  // namespace

void CpuBackend::rope_forward(float* x, int B, int T, int H, int D, int pos0, float theta) {
  rope_rotate(x, B, T, H, D, pos0, theta, +1, "rope_forward");
}

void CpuBackend::rope_backward(float* dx, int B, int T, int H, int D, int pos0, float theta) {
  rope_rotate(dx, B, T, H, D, pos0, theta, -1, "rope_backward");
}

}  // namespace kvroute
