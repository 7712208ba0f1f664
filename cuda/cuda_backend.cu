// CUDA backend core: device discovery, the stream and cuBLAS handle, memory,
// scratch buffers and the pointer-table ring used by routed attention.
#include "cuda_backend.h"

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

namespace kvroute {

void cuda_fail(const char* expr, const char* message, const char* file, int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                           (message ? message : "unknown error"));
}

// True when a CUDA driver and at least one device are usable. Never throws:
// without a driver cudaGetDeviceCount returns an error code, which we clear.
bool cuda_device_present() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

std::unique_ptr<Backend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

CudaBackend::CudaBackend() {
  try {
    KVR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    KVR_CUBLAS_CHECK(cublasCreate(&cublas_));
    KVR_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // Plain fp32 GEMMs (no TF32), so results match the CPU backend closely.
    KVR_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    for (auto& ev : ptr_events_) KVR_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  } catch (...) {
    release();
    throw;
  }
}

CudaBackend::~CudaBackend() { release(); }

// Frees everything that was created; never throws (errors on teardown are ignored).
void CudaBackend::release() noexcept {
  if (stream_) (void)cudaStreamSynchronize(stream_);
  for (void*& p : scratch_) {
    if (p) (void)cudaFree(p);
    p = nullptr;
  }
  if (ptr_dev_) (void)cudaFree(ptr_dev_);
  if (ptr_host_) (void)cudaFreeHost(ptr_host_);
  ptr_dev_ = nullptr;
  ptr_host_ = nullptr;
  for (auto& ev : ptr_events_) {
    if (ev) (void)cudaEventDestroy(ev);
    ev = nullptr;
  }
  if (cublas_) (void)cublasDestroy(cublas_);
  if (stream_) (void)cudaStreamDestroy(stream_);
  cublas_ = nullptr;
  stream_ = nullptr;
}

void* CudaBackend::alloc_bytes(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  KVR_CUDA_CHECK(cudaMalloc(&p, bytes));
  KVR_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
  return p;
}

void CudaBackend::free_bytes(void* p) {
  if (!p) return;
  // Work already enqueued may still use p.
  KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  KVR_CUDA_CHECK(cudaFree(p));
}

void CudaBackend::copy_to_device(void* dst, const void* host_src, std::size_t bytes) {
  if (bytes == 0) return;
  KVR_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  // The caller may free or reuse host_src as soon as we return.
  KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_to_host(void* host_dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  KVR_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  KVR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::fill_zero(void* p, std::size_t bytes) {
  if (bytes == 0) return;
  KVR_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
}

void CudaBackend::synchronize() { KVR_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void* CudaBackend::scratch(ScratchSlot slot, std::size_t bytes) {
  if (bytes > scratch_bytes_[slot]) {
    if (scratch_[slot]) {
      KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
      KVR_CUDA_CHECK(cudaFree(scratch_[slot]));
      scratch_[slot] = nullptr;
      scratch_bytes_[slot] = 0;
    }
    const std::size_t grown = bytes + bytes / 2;
    KVR_CUDA_CHECK(cudaMalloc(&scratch_[slot], grown));
    scratch_bytes_[slot] = grown;
  }
  return scratch_[slot];
}

void* const* CudaBackend::upload_pointers(const std::vector<void*>& ptrs) {
  const std::size_t n = ptrs.size();
  if (n > ptr_cap_) {
    // Everything in flight finishes first, so no copy or kernel uses the old ring.
    KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (ptr_dev_) KVR_CUDA_CHECK(cudaFree(ptr_dev_));
    if (ptr_host_) KVR_CUDA_CHECK(cudaFreeHost(ptr_host_));
    ptr_dev_ = nullptr;
    ptr_host_ = nullptr;
    ptr_cap_ = 0;
    const std::size_t cap = n < 64 ? 64 : n;
    KVR_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ptr_host_), kPtrSlots * cap * sizeof(void*)));
    KVR_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_dev_), kPtrSlots * cap * sizeof(void*)));
    ptr_cap_ = cap;
    for (bool& pending : ptr_pending_) pending = false;  // the stream is idle
  }
  const int slot = ptr_next_;
  ptr_next_ = (ptr_next_ + 1) % kPtrSlots;
  // The previous copy out of this slot's pinned memory must have happened.
  if (ptr_pending_[slot]) KVR_CUDA_CHECK(cudaEventSynchronize(ptr_events_[slot]));
  void** host = ptr_host_ + static_cast<std::size_t>(slot) * ptr_cap_;
  void** dev = ptr_dev_ + static_cast<std::size_t>(slot) * ptr_cap_;
  std::memcpy(host, ptrs.data(), n * sizeof(void*));
  KVR_CUDA_CHECK(cudaMemcpyAsync(dev, host, n * sizeof(void*), cudaMemcpyHostToDevice, stream_));
  KVR_CUDA_CHECK(cudaEventRecord(ptr_events_[slot], stream_));
  ptr_pending_[slot] = true;
  return dev;
}

}  // namespace kvroute
