// AdamW with bias correction and decoupled weight decay.
#include <cmath>
#include <string>

#include "cpu/cpu_backend.h"

namespace kvroute {

void CpuBackend::adamw_step(float* param, const float* grad, float* m, float* v, std::size_t n, float lr,
                            float beta1, float beta2, float eps, float weight_decay, int step,
                            float grad_scale) {
  written(param, n * sizeof(float));
  cpu::require(step >= 1, "adamw_step", "step starts at 1, got " + std::to_string(step));
  cpu::require(beta1 >= 0.f && beta1 < 1.f && beta2 >= 0.f && beta2 < 1.f, "adamw_step",
               "betas must be in [0, 1)");
  const float bias1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta1), step)));
  const float bias2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta2), step)));
#pragma omp parallel for simd schedule(static) if (parallel : n >= cpu::kParallelMinElements)
  for (std::size_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * bias1;
    const float vhat = vi * bias2;
    param[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * param[i]);
  }
}

}  // namespace kvroute
