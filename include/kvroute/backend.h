// The op interface. The model is written once against Backend; each backend
// (src/cpu, cuda/) holds only ops. All tensors are row-major float32 device
// pointers unless stated; sizes are element counts.
//
// Convention: a forward op overwrites its output. A backward op ADDS into its
// gradient outputs (dx += ..., dw += ...), llm.c style, so gradients that meet
// at one tensor (residual stream, a shared KV source layer) simply accumulate.
// The caller zeroes gradient buffers before backward.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvroute/attention.h"
#include "kvroute/rope.h"

namespace kvroute {

enum class Device { CPU, CUDA };

// Numerics and reproducibility of a backend (train.precision, train.deterministic).
struct BackendOptions {
  // "fp32": every op in fp32. "bf16": matmul rounds its operands to bf16 (nearest even) and
  // multiplies with fp32 accumulation and fp32 output: on tensor cores (CUDA), on AMX or
  // AVX512-BF16 through oneDNN (CPU), or as an fp32 sgemm of the rounded operands on CPUs
  // without native bf16. Attention at head_dim 64 and 128 (forward and backward) also rounds
  // Q/K/V, dout, the probabilities and dS to bf16, with fp32 softmax and sums: CUDA's tensor-core
  // kernels, and on the CPU their twin with the same rounding points (AVX512-BF16 dot products,
  // or the same products on fp32 vectors; src/cpu/attention_bf16_cpu.h). Other head dims: fp32.
  // Buffers stay fp32, and every other op, the weights, gradients and optimizer state too.
  // "auto" is resolved by make_backend (resolve_precision below) before a backend sees it.
  std::string precision = "fp32";
  // true: results are bitwise identical run to run. false lets the CUDA attention backward
  // fuse its dQ pass into the dK/dV kernel with float atomics (order varies run to run), and
  // the CUDA bf16 GEMMs use cuBLASLt algorithms that split K.
  bool deterministic = true;
  // The CUDA device to run on, modulo the devices visible (ignored by the CPU backend). -1:
  // make_backend picks the launcher's local rank (launcher_local_rank() in comm.h), so under
  // mpirun each rank of a node drives its own GPU.
  int device_ordinal = -1;
  // CUDA, bf16: run attention through cuDNN's fused kernels where they apply (training shapes at
  // head_dim 64 and 128; cuda/cudnn_attention_plan.h). false keeps kvroute's own kernels, as does
  // a build or a machine without cuDNN, or KVROUTE_CUDNN=0 in the environment.
  bool cudnn_attention = true;
};

// Device memory held by a backend's own allocations (alloc_bytes and internal scratch).
struct BackendMemory {
  std::size_t in_use_bytes = 0;
  std::size_t peak_bytes = 0;
  long allocations = 0;           // device allocations made so far
  std::size_t device_total_bytes = 0;  // the device's capacity; 0 when not a device backend
};

// ---- The ops, listed once ----
// One entry per op: X(return type, name, (parameters), (arguments)). Backend (below) declares
// each as a pure virtual; ForwardingBackend (forwarding_backend.h) forwards each to the backend
// it wraps, so ProfilingBackend and the tests' decorators need no edit for a new op. Adding an
// op is one entry here plus its CPU (src/cpu/) and CUDA (cuda/) implementations.
#define KVROUTE_BACKEND_OPS(X) \
  /* ---- memory copies; fill_zero sets bytes to 0 ---- */ \
  X(void, copy_to_device, (void* dst, const void* host_src, std::size_t bytes), (dst, host_src, bytes)) \
  X(void, copy_to_host, (void* host_dst, const void* src, std::size_t bytes), (host_dst, src, bytes)) \
  X(void, copy, (void* dst, const void* src, std::size_t bytes), (dst, src, bytes)) \
  X(void, fill_zero, (void* p, std::size_t bytes), (p, bytes)) \
  \
  /* ---- dense algebra ---- */ \
  /* C[M,N] = alpha * op(A) * op(B) + beta * C, where op(A) is [M,K] and op(B) is [K,N]. */ \
  /* A is stored [M,K] (or [K,M] if trans_a); B is stored [K,N] (or [N,K] if trans_b). */ \
  X(void, matmul, (const float* A, const float* B, float* C, int M, int N, int K, bool trans_a, bool trans_b, \
                   float alpha, float beta), \
    (A, B, C, M, N, K, trans_a, trans_b, alpha, beta)) \
  /* y += x */ \
  X(void, accumulate, (float* y, const float* x, std::size_t n), (y, x, n)) \
  /* y = a + b */ \
  X(void, add, (float* y, const float* a, const float* b, std::size_t n), (y, a, b, n)) \
  /* x *= s */ \
  X(void, scale, (float* x, std::size_t n, float s), (x, n, s)) \
  /* sum of x[i]^2, in double */ \
  X(double, sum_squares, (const float* x, std::size_t n), (x, n)) \
  \
  /* ---- embedding: out[N,C] = table[ids[n], :] ---- */ \
  X(void, embedding_forward, (float* out, const int32_t* ids, const float* table, int N, int C), \
    (out, ids, table, N, C)) \
  X(void, embedding_backward, (float* dtable, const float* dout, const int32_t* ids, int N, int C), \
    (dtable, dout, ids, N, C)) \
  \
  /* ---- RMSNorm: out = x / rms(x) * w; rstd[N] saved for backward ---- */ \
  X(void, rmsnorm_forward, (float* out, float* rstd, const float* x, const float* w, int N, int C, float eps), \
    (out, rstd, x, w, N, C, eps)) \
  X(void, rmsnorm_backward, (float* dx, float* dw, const float* dout, const float* x, const float* w, \
                             const float* rstd, int N, int C), \
    (dx, dw, dout, x, w, rstd, N, C)) \
  \
  /* ---- RoPE, in place on x[B,T,H,D] (rotate-half pairing: i with i+D/2), positions pos0..pos0+T-1 ---- */ \
  /* Pair i turns by (pos0 + t) * rope_inv_freq(rope, i, D) (rope.h: theta and the optional scaling). */ \
  X(void, rope_forward, (float* x, int B, int T, int H, int D, int pos0, const RopeSpec& rope), \
    (x, B, T, H, D, pos0, rope)) \
  /* In place on the gradient: applies the inverse rotation. */ \
  X(void, rope_backward, (float* dx, int B, int T, int H, int D, int pos0, const RopeSpec& rope), \
    (dx, B, T, H, D, pos0, rope)) \
  \
  /* ---- bias: y[N,C] += b[C] on every row; backward db[C] += column sums of dy[N,C] ---- */ \
  X(void, bias_forward, (float* y, const float* b, int N, int C), (y, b, N, C)) \
  X(void, bias_backward, (float* db, const float* dy, int N, int C), (db, dy, N, C)) \
  \
  /* ---- SwiGLU: out = silu(gate) * up, all [n] ---- */ \
  X(void, swiglu_forward, (float* out, const float* gate, const float* up, std::size_t n), (out, gate, up, n)) \
  X(void, swiglu_backward, (float* dgate, float* dup, const float* dout, const float* gate, const float* up, \
                            std::size_t n), \
    (dgate, dup, dout, gate, up, n)) \
  \
  /* ---- routed causal attention (see attention.h) ---- */ \
  X(void, attention_forward, (const AttentionForward& p), (p)) \
  X(void, attention_backward, (const AttentionBackward& p), (p)) \
  \
  /* ---- fused softmax cross-entropy over the vocabulary ---- */ \
  /* losses[n] = -log softmax(logits[n])[targets[n]]. If dlogits is non-null it receives */ \
  /* grad_scale * (softmax - onehot); dlogits may alias logits. targets < 0 are ignored (loss 0, grad 0). */ \
  /* A target >= V is an error, std::invalid_argument(cross_entropy_target_error(...)): the CPU */ \
  /* backend throws it from this call; the CUDA backend, whose targets are on the device, at */ \
  /* the next call that waits for the device (copy_to_host, synchronize, sum_squares). */ \
  X(void, cross_entropy, (const float* logits, const int32_t* targets, float* losses, float* dlogits, int N, int V, \
                          float grad_scale), \
    (logits, targets, losses, dlogits, N, V, grad_scale)) \
  \
  /* ---- AdamW on one contiguous parameter range (decoupled weight decay) ---- */ \
  X(void, adamw_step, (float* param, const float* grad, float* m, float* v, std::size_t n, float lr, float beta1, \
                       float beta2, float eps, float weight_decay, int step, float grad_scale), \
    (param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step, grad_scale))

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // ---- memory (allocations are zero-filled; the copies are ops, listed below) ----
  virtual void* alloc_bytes(std::size_t bytes) = 0;
  virtual void free_bytes(void* p) = 0;
  virtual void synchronize() = 0;
  // Device memory accounting; the CPU backend reports zeros (its memory is process RSS).
  virtual BackendMemory memory() const { return {}; }
  // bench train's MFU denominator: FLOP/s of one n x n x n GEMM in the precision matmul
  // computes in, on operands the backend keeps between calls. 0 = no probe of its own
  // (bench train then times matmul() on fp32 buffers: an sgemm).
  virtual double peak_gemm_flops(int n) { (void)n; return 0; }
  virtual std::string peak_gemm_label() const { return "sgemm"; }
  // The model's weights: one contiguous buffer, written only through the memory ops
  // (copies, fill_zero, accumulate, add, scale) and adamw_step. A backend that multiplies in
  // bf16 may keep a rounded copy of it, refreshed after such a write, instead of rounding
  // the weights on every matmul. A hint: ignoring it changes no result. Whoever writes the
  // buffer other than through those ops (a communicator's all-gather) registers it again.
  virtual void register_weights(const float* w, std::size_t n) { (void)w; (void)n; }

  // ---- the ops: one pure virtual per entry of KVROUTE_BACKEND_OPS above ----
#define KVROUTE_DECLARE_OP(ret, name, params, args) virtual ret name params = 0;
  KVROUTE_BACKEND_OPS(KVROUTE_DECLARE_OP)
#undef KVROUTE_DECLARE_OP
};

// train.precision as a backend computes it: "fp32" and "bf16" as asked; "auto" is bf16 where
// the hardware multiplies bf16 natively (CUDA; a CPU with AMX or AVX512-BF16), else fp32.
struct ResolvedPrecision {
  std::string precision;  // "fp32" or "bf16"
  std::string reason;     // one line for the log, e.g. "auto: oneDNN ISA avx512_core_bf16 has native bf16"
};
ResolvedPrecision resolve_precision(const std::string& backend, const std::string& requested);

// The message of Backend::cross_entropy's error for target id `target` >= V at row `row`.
inline std::string cross_entropy_target_error(long row, long target, long V) {
  return "cross_entropy: target " + std::to_string(target) + " at row " + std::to_string(row) +
         " is out of range for vocabulary size " + std::to_string(V);
}

// "cpu" or "cuda". A build without CUDA refuses "cuda" with a clear message.
std::unique_ptr<Backend> make_backend(const std::string& name);
std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options);
bool cuda_available();

// Typed owning buffer on a backend.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend* be, std::size_t n) : be_(be), n_(n) {
    ptr_ = n ? static_cast<T*>(be->alloc_bytes(n * sizeof(T))) : nullptr;
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_; ptr_ = o.ptr_; n_ = o.n_;
      o.ptr_ = nullptr; o.n_ = 0;
    }
    return *this;
  }
  void reset() {
    if (ptr_) be_->free_bytes(ptr_);
    ptr_ = nullptr; n_ = 0;
  }
  T* get() const { return ptr_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(T); }
  void upload(const std::vector<T>& host) { be_->copy_to_device(ptr_, host.data(), host.size() * sizeof(T)); }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    if (n_) be_->copy_to_host(h.data(), ptr_, bytes());
    return h;
  }

 private:
  Backend* be_ = nullptr;
  T* ptr_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace kvroute
