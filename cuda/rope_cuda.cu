// Rotary position embedding, in place on x[B, T, H, D], rotate-half pairing:
// element i rotates with i + D/2 by angle (pos0 + t) * rope_inv_freq(spec, i, D)
// (kvroute/rope.h: theta^(-2i/D), optionally rescaled; the CPU op calls the same function).
// Backward applies the inverse rotation (angle negated) to the gradient.
//
// Thread (t, i) computes its cos/sin once, in double like the CPU backend
// (pos * freq can be large), then rotates pair i of every (b, h) row at time t
// handled by its blockIdx.y slice.
#include <stdexcept>
#include <string>

#include "cuda_backend.h"

namespace kvroute {
namespace {

constexpr int kBlock = 128;
constexpr int kMaxRowSlices = 256;

// grid: (ceil(T * D/2 / kBlock), row slices)
__global__ void rope_kernel(float* x, int B, int T, int H, int D, int pos0, RopeSpec spec, float direction) {
  const int half = D / 2;
  const int idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= T * half) return;
  const int t = idx / half;
  const int i = idx % half;
  const double freq = rope_inv_freq(spec, i, D);
  const double angle = static_cast<double>(pos0 + t) * freq;
  double sd, cd;
  sincos(angle, &sd, &cd);
  const float c = static_cast<float>(cd);
  const float s = static_cast<float>(direction * sd);
  const int rows = B * H;
  for (int bh = blockIdx.y; bh < rows; bh += gridDim.y) {
    const int b = bh / H;
    const int h = bh % H;
    float* x1 = x + ((static_cast<std::size_t>(b) * T + t) * H + h) * D;
    float* x2 = x1 + half;
    const float a = x1[i], bb = x2[i];
    x1[i] = a * c - bb * s;
    x2[i] = a * s + bb * c;
  }
}

void launch_rope(cudaStream_t stream, float* x, int B, int T, int H, int D, int pos0, const RopeSpec& spec,
                 float direction, const char* op) {
  if (B < 0 || T < 0 || H < 0 || D <= 0) throw std::invalid_argument(std::string(op) + ": bad shape");
  if (D % 2 != 0) throw std::invalid_argument(std::string(op) + ": head_dim must be even, got " + std::to_string(D));
  if (pos0 < 0) throw std::invalid_argument(std::string(op) + ": pos0 must be >= 0");
  if (const std::string problem = rope_spec_problem(spec); !problem.empty())
    throw std::invalid_argument(std::string(op) + ": " + problem);
  if (B == 0 || T == 0 || H == 0) return;
  const int pairs = T * (D / 2);
  const int rows = B * H;
  const dim3 grid((pairs + kBlock - 1) / kBlock, rows < kMaxRowSlices ? rows : kMaxRowSlices);
  rope_kernel<<<grid, kBlock, 0, stream>>>(x, B, T, H, D, pos0, spec, direction);
  KVR_KERNEL_CHECK();
}

}  // namespace

void CudaBackend::rope_forward(float* x, int B, int T, int H, int D, int pos0, const RopeSpec& rope) {
  launch_rope(stream_, x, B, T, H, D, pos0, rope, +1.f, "rope_forward");
}

void CudaBackend::rope_backward(float* dx, int B, int T, int H, int D, int pos0, const RopeSpec& rope) {
  launch_rope(stream_, dx, B, T, H, D, pos0, rope, -1.f, "rope_backward");
}

}  // namespace kvroute
