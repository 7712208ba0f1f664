// CUDA backend core: device discovery, the stream and cuBLAS(Lt) handles, memory
// (with the accounting memory() reports), scratch buffers and the pointer-table
// ring used by routed attention.
#include "cuda_backend.h"

#include <algorithm>
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

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

CudaBackend::CudaBackend(const BackendOptions& options) : options_(options) {
  if (options_.precision != "fp32" && options_.precision != "bf16")
    throw std::invalid_argument("CUDA backend: unknown precision '" + options_.precision + "' (fp32 or bf16)");
  try {
    // The device asked for (make_backend passes the launcher's local rank, so under mpirun each
    // rank drives its own GPU), modulo the GPUs this process can see. Chosen
    // here, before the stream and handles exist, because they belong to the current device.
    int devices = 0;
    KVR_CUDA_CHECK(cudaGetDeviceCount(&devices));
    if (devices < 1) throw std::runtime_error("CUDA backend: no CUDA device is visible");
    device_ = std::max(options_.device_ordinal, 0) % devices;
    KVR_CUDA_CHECK(cudaSetDevice(device_));
    int smem_optin = 0;
    KVR_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
    smem_optin_ = static_cast<std::size_t>(smem_optin);
    KVR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    KVR_CUBLAS_CHECK(cublasCreate(&cublas_));
    KVR_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // Plain fp32 GEMMs (no TF32), so results match the CPU backend closely.
    KVR_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    for (auto& ev : ptr_events_) KVR_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    KVR_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ce_error_), 3 * sizeof(unsigned long long)));
    track_alloc(ce_error_, 3 * sizeof(unsigned long long));
    KVR_CUDA_CHECK(cudaMemsetAsync(ce_error_, 0xff, 3 * sizeof(unsigned long long), stream_));  // ~0: none
    KVR_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ce_error_host_), 2 * sizeof(unsigned long long)));
    ce_error_host_[0] = ce_error_host_[1] = ~0ull;
    if (options_.precision == "bf16") {
      KVR_CUBLAS_CHECK(cublasLtCreate(&lt_));
      KVR_CUDA_CHECK(cudaMalloc(&lt_workspace_, kLtWorkspaceBytes));
      track_alloc(lt_workspace_, kLtWorkspaceBytes);
    }
  } catch (...) {
    release();
    throw;
  }
}

CudaBackend::~CudaBackend() { release(); }

// Frees everything that was created; never throws (errors on teardown are ignored).
void CudaBackend::release() noexcept {
  if (stream_) (void)cudaStreamSynchronize(stream_);
  cudnn_.reset();  // its handle is bound to stream_
  for (auto& [key, plan] : lt_plans_) {
    if (plan.a) (void)cublasLtMatrixLayoutDestroy(plan.a);
    if (plan.b) (void)cublasLtMatrixLayoutDestroy(plan.b);
    if (plan.c) (void)cublasLtMatrixLayoutDestroy(plan.c);
    if (plan.op) (void)cublasLtMatmulDescDestroy(plan.op);
  }
  lt_plans_.clear();
  if (lt_workspace_) (void)cudaFree(lt_workspace_);
  lt_workspace_ = nullptr;
  if (lt_) (void)cublasLtDestroy(lt_);
  lt_ = nullptr;
  for (void*& p : scratch_) {
    if (p) (void)cudaFree(p);
    p = nullptr;
  }
  if (ce_error_) (void)cudaFree(ce_error_);
  if (ce_error_host_) (void)cudaFreeHost(ce_error_host_);
  ce_error_ = nullptr;
  ce_error_host_ = nullptr;
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
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    std::size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    throw std::runtime_error("CUDA backend: cannot allocate " + std::to_string(bytes >> 20) + " MiB (" +
                             cudaGetErrorString(err) + "); this backend holds " + std::to_string(in_use_bytes_ >> 20) +
                             " MiB, the device has " + std::to_string(free_b >> 20) + " of " +
                             std::to_string(total_b >> 20) + " MiB free. Reduce train.batch_size or train.seq_len, "
                             "or set train.recompute");
  }
  track_alloc(p, bytes);
  KVR_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
  return p;
}

void CudaBackend::track_alloc(void* p, std::size_t bytes) {
  allocations_[p] = bytes;
  in_use_bytes_ += bytes;
  if (in_use_bytes_ > peak_bytes_) peak_bytes_ = in_use_bytes_;
  ++n_allocations_;
}

void CudaBackend::track_free(void* p) {
  const auto it = allocations_.find(p);
  if (it == allocations_.end()) return;
  in_use_bytes_ -= it->second;
  allocations_.erase(it);
}

BackendMemory CudaBackend::memory() const {
  BackendMemory m;
  m.in_use_bytes = in_use_bytes_;
  m.peak_bytes = peak_bytes_;
  m.allocations = n_allocations_;
  std::size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    m.device_total_bytes = total_b;
  } else {
    (void)cudaGetLastError();
  }
  return m;
}

void CudaBackend::free_bytes(void* p) {
  if (!p) return;
  // Work already enqueued may still use p.
  KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  KVR_CUDA_CHECK(cudaFree(p));
  track_free(p);
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
  throw_device_errors();
}

void CudaBackend::copy(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  KVR_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::fill_zero(void* p, std::size_t bytes) {
  if (bytes == 0) return;
  KVR_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
}

void CudaBackend::synchronize() {
  KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
  throw_device_errors();
}

void* CudaBackend::scratch(ScratchSlot slot, std::size_t bytes) {
  if (bytes > scratch_bytes_[slot]) {
    if (scratch_[slot]) {
      KVR_CUDA_CHECK(cudaStreamSynchronize(stream_));
      KVR_CUDA_CHECK(cudaFree(scratch_[slot]));
      track_free(scratch_[slot]);
      scratch_[slot] = nullptr;
      scratch_bytes_[slot] = 0;
    }
    const std::size_t grown = bytes + bytes / 2;
    KVR_CUDA_CHECK(cudaMalloc(&scratch_[slot], grown));
    track_alloc(scratch_[slot], grown);
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
    track_free(ptr_dev_);
    if (ptr_host_) KVR_CUDA_CHECK(cudaFreeHost(ptr_host_));
    ptr_dev_ = nullptr;
    ptr_host_ = nullptr;
    ptr_cap_ = 0;
    const std::size_t cap = n < 64 ? 64 : n;
    KVR_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ptr_host_), kPtrSlots * cap * sizeof(void*)));
    KVR_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_dev_), kPtrSlots * cap * sizeof(void*)));
    track_alloc(ptr_dev_, kPtrSlots * cap * sizeof(void*));
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
