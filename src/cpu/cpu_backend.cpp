// CPU memory and element-wise vector ops.
#include "cpu/cpu_backend.h"

#include "cpu/attention_bf16_cpu.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

namespace kvroute {
namespace {

constexpr std::size_t kAlignment = 64;  // one cache line, enough for any SIMD width

}  // namespace

CpuBackend::CpuBackend(const BackendOptions& options)
    : CpuBackend(options, cpu::native_bf16_available() ? cpu::Bf16Path::Native : cpu::Bf16Path::Emulated) {}

CpuBackend::CpuBackend(const BackendOptions& options, cpu::Bf16Path bf16_path) : options_(options) {
  if (options_.precision == "bf16") {
    bf16_ = std::make_unique<cpu::Bf16Matmul>(bf16_path);
    // The matmul's path also decides attention's (ONEDNN_MAX_CPU_ISA pins both), where the CPU has
    // the instructions the attention kernels use.
    bf16_attention_path_ = bf16_path == cpu::Bf16Path::Native && cpu::attention_bf16_native_available()
                               ? cpu::Bf16Path::Native
                               : cpu::Bf16Path::Emulated;
  } else if (options_.precision != "fp32") {
    throw std::invalid_argument("CpuBackend: precision must be fp32 or bf16, not '" + options_.precision + "'");
  }
}

void CpuBackend::register_weights(const float* w, std::size_t n) {
  if (bf16_) bf16_->register_weights(w, n);
}

void* CpuBackend::alloc_bytes(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  return p;
}

void CpuBackend::free_bytes(void* p) {
  if (bf16_) bf16_->freed(p);
  std::free(p);
}

void CpuBackend::copy_to_device(void* dst, const void* host_src, std::size_t bytes) {
  copy(dst, host_src, bytes);
}

void CpuBackend::copy_to_host(void* host_dst, const void* src, std::size_t bytes) {
  copy(host_dst, src, bytes);
}

void CpuBackend::copy(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  cpu::require(dst && src, "copy", "null pointer");
  written(dst, bytes);
  std::memmove(dst, src, bytes);
}

void CpuBackend::fill_zero(void* p, std::size_t bytes) {
  if (bytes == 0) return;
  cpu::require(p != nullptr, "fill_zero", "null pointer");
  written(p, bytes);
  std::memset(p, 0, bytes);
}

void CpuBackend::accumulate(float* y, const float* x, std::size_t n) {
  written(y, n * sizeof(float));
#pragma omp parallel for simd schedule(static) if (parallel : n >= cpu::kParallelMinElements)
  for (std::size_t i = 0; i < n; ++i) y[i] += x[i];
}

void CpuBackend::add(float* y, const float* a, const float* b, std::size_t n) {
  written(y, n * sizeof(float));
#pragma omp parallel for simd schedule(static) if (parallel : n >= cpu::kParallelMinElements)
  for (std::size_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void CpuBackend::scale(float* x, std::size_t n, float s) {
  written(x, n * sizeof(float));
#pragma omp parallel for simd schedule(static) if (parallel : n >= cpu::kParallelMinElements)
  for (std::size_t i = 0; i < n; ++i) x[i] *= s;
}

double CpuBackend::sum_squares(const float* x, std::size_t n) {
  // Fixed-size chunks summed in a fixed order: the result is independent of the thread count.
  constexpr std::size_t kChunk = 1 << 14;
  const std::size_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);
#pragma omp parallel for schedule(static) if (parallel : n >= cpu::kParallelMinElements)
  for (std::size_t c = 0; c < n_chunks; ++c) {
    const std::size_t begin = c * kChunk;
    const std::size_t end = begin + kChunk < n ? begin + kChunk : n;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (std::size_t i = begin; i < end; ++i) s += static_cast<double>(x[i]) * x[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace kvroute
