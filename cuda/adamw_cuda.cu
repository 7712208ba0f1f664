// AdamW with bias correction and decoupled weight decay, one thread per element:
//   g = grad * grad_scale;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   mhat = m / (1 - b1^step);  vhat = v / (1 - b2^step)
//   p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)
// The bias corrections are computed once on the host in double (as the CPU
// backend does) and passed as reciprocals.
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBlock = 256;

__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, std::size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float bias1, float bias2, float grad_scale) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float g = grad[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * bias1;
    const float vhat = vi * bias2;
    const float p = param[i];
    param[i] = p - lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * p);
  }
}

}  // namespace

void CudaBackend::adamw_step(float* param, const float* grad, float* m, float* v, std::size_t n, float lr,
                             float beta1, float beta2, float eps, float weight_decay, int step, float grad_scale) {
  if (step < 1) throw std::invalid_argument("adamw_step: step starts at 1, got " + std::to_string(step));
  if (!(beta1 >= 0.f && beta1 < 1.f && beta2 >= 0.f && beta2 < 1.f))
    throw std::invalid_argument("adamw_step: betas must be in [0, 1)");
  if (n == 0) return;
  const float bias1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta1), step)));
  const float bias2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta2), step)));
  adamw_kernel<<<grid_for(n, kBlock), kBlock, 0, stream_>>>(param, grad, m, v, n, lr, beta1, beta2, eps,
                                                            weight_decay, bias1, bias2, grad_scale);
  KVR_KERNEL_CHECK();
}

}  // namespace kvroute
