// SwiGLU: out = silu(gate) * up, silu(g) = g * sigmoid(g). The loops run on
// float vectors (cpu_math.h) so the exp vectorises, with a scalar tail.
#include "cpu/cpu_backend.h"
#include "cpu/cpu_math.h"

namespace kvroute {
namespace {

using cpu::floatv;
using cpu::kLanes;

template <typename F>
inline F sigmoid(F g) {
  return 1.0f / (1.0f + cpu::fast_exp(-g));
}

template <typename F>
inline F swiglu(F g, F u) {
  return g * sigmoid(g) * u;
}

// d silu(g)/dg = sigmoid(g) * (1 + g * (1 - sigmoid(g))).
template <typename F>
inline void swiglu_grad(F g, F u, F dout, F& dgate, F& dup) {
  const F sig = sigmoid(g);
  dgate += dout * u * sig * (1.0f + g * (1.0f - sig));
  dup += dout * g * sig;
}

}  // namespace

void CpuBackend::swiglu_forward(float* out, const float* gate, const float* up, std::size_t n) {
  const long n_vec = static_cast<long>(n / kLanes);
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMinElements)
  for (long v = 0; v < n_vec; ++v) {
    const std::size_t i = static_cast<std::size_t>(v) * kLanes;
    cpu::store_vec(out + i, swiglu(cpu::load_vec(gate + i), cpu::load_vec(up + i)));
  }
  for (std::size_t i = n_vec * kLanes; i < n; ++i) out[i] = swiglu(gate[i], up[i]);
}

void CpuBackend::swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                                 const float* up, std::size_t n) {
  const long n_vec = static_cast<long>(n / kLanes);
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMinElements)
  for (long v = 0; v < n_vec; ++v) {
    const std::size_t i = static_cast<std::size_t>(v) * kLanes;
    floatv dg = cpu::load_vec(dgate + i), du = cpu::load_vec(dup + i);
    swiglu_grad(cpu::load_vec(gate + i), cpu::load_vec(up + i), cpu::load_vec(dout + i), dg, du);
    cpu::store_vec(dgate + i, dg);
    cpu::store_vec(dup + i, du);
  }
  for (std::size_t i = n_vec * kLanes; i < n; ++i) swiglu_grad(gate[i], up[i], dout[i], dgate[i], dup[i]);
}

}  // namespace kvroute
