// The CUDA backend's cuDNN attention path (cudnn_attention_plan.h says when it runs and what it
// rounds): fp32 operands cast to bf16 into scratch, cuDNN's SDPA graphs (cudnn_attention.cpp)
// on them, and the bf16 results cast back (out) or added (dq, dK, dV: kvroute's backward adds
// into gradients, cuDNN writes). Every addition is one thread per element over disjoint
// slices, in the order the stream runs the calls: deterministic, no atomics.
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_backend.h"
#include "kvroute/bf16.h"

namespace kvroute {
namespace {

constexpr int kBlock = 256;

// dst[i * per + r] = bf16(bases[i][r]) for i < n / per: each sequence's source K (or V) into one
// dense bf16 tensor.
__global__ void gather_to_bf16_kernel(float* const* __restrict__ bases, long per, std::size_t n,
                                      uint16_t* __restrict__ dst) {
  for (std::size_t e = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    dst[e] = bf16_from_float(bases[e / per][e % per]);
}

__global__ void bf16_to_float_kernel(const uint16_t* __restrict__ x, float* __restrict__ y, std::size_t n) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    y[i] = float_from_bf16(x[i]);
}

// bases[i][r] += float(src[i * per + r]): addition i of cudnn_grad_additions (or dq, with one base).
__global__ void add_bf16_kernel(float* const* __restrict__ bases, long per, std::size_t n,
                                const uint16_t* __restrict__ src) {
  for (std::size_t e = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    bases[e / per][e % per] += float_from_bf16(src[e]);
}

}  // namespace

void launch_gather_to_bf16(float* const* bases, long per, std::size_t n, uint16_t* dst, cudaStream_t stream) {
  if (n == 0) return;
  gather_to_bf16_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(bases, per, n, dst);
  KVR_KERNEL_CHECK();
}

void launch_bf16_to_float(const uint16_t* x, float* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  bf16_to_float_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(x, y, n);
  KVR_KERNEL_CHECK();
}

void launch_add_bf16(float* const* bases, long per, std::size_t n, const uint16_t* src, cudaStream_t stream) {
  if (n == 0) return;
  add_bf16_kernel<<<grid_for(n, kBlock), kBlock, 0, stream>>>(bases, per, n, src);
  KVR_KERNEL_CHECK();
}

// ---- the backend's side ----

std::string CudaBackend::cudnn_unavailable_for(const AttentionDims& a) {
  if (!cudnn_tried_) {
    cudnn_tried_ = true;
    const char* env = std::getenv("KVROUTE_CUDNN");
    if (!options_.cudnn_attention)
      cudnn_unavailable_ = "switched off (BackendOptions::cudnn_attention)";
    else if (env && std::string(env) == "0")
      cudnn_unavailable_ = "switched off by KVROUTE_CUDNN=0";
    else
      cudnn_ = CudnnAttention::create(stream_, &cudnn_unavailable_);
  }
  if (!cudnn_) return cudnn_unavailable_;
  // Both directions' graphs are built at a shape's first call, so a shape cuDNN cannot run keeps
  // kvroute's kernels in both directions (the backward recomputes P from the forward's lse).
  const CudnnSdpaKey forward_key = CudnnSdpaKey::of(a, false, false);
  auto it = cudnn_shape_unavailable_.find(forward_key);
  if (it == cudnn_shape_unavailable_.end()) {
    std::string why;
    try {
      cudnn_->workspace_bytes(forward_key);
      cudnn_->workspace_bytes(CudnnSdpaKey::of(a, true, options_.deterministic));
    } catch (const std::exception& e) {
      why = e.what();
    }
    it = cudnn_shape_unavailable_.emplace(forward_key, why).first;
  }
  return it->second;
}

AttentionPath CudaBackend::attention_path(const AttentionDims& a) {
  AttentionPathInputs in;
  in.bf16 = options_.precision == "bf16";
  in.head_dim = a.D;
  in.Tq = a.Tq;
  in.Tk = a.Tk;
  in.q_pos0 = a.q_pos0;
  in.smem_optin_limit = smem_optin_;
  in.cudnn_unavailable = "not asked";
  if (cudnn_attention_shape(in.bf16, a.D, a.Tq, a.Tk, a.q_pos0)) in.cudnn_unavailable = cudnn_unavailable_for(a);
  const AttentionPathChoice c = choose_attention_path(in);
  if (!c.error.empty()) throw std::runtime_error(c.error);
  if (attention_path_said_.insert(c.why).second) std::cerr << "kvroute: " << c.why << "\n";
  return c.path;
}

// K (or V) of every sequence's source layer, as one dense bf16 [B, Tk, Hkv, D] tensor.
void CudaBackend::kv_to_bf16(const float* const* layers, const int32_t* src, const AttentionDims& a, uint16_t* dst) {
  const CudnnKvSource s = cudnn_kv_source(a, src);
  const std::size_t n = static_cast<std::size_t>(s.seq_elems) * a.B;
  if (s.contiguous) return launch_float_to_bf16(layers[s.layer], dst, n, stream_);  // the source's buffer as it is
  std::vector<void*> bases;
  bases.reserve(a.B);
  for (int b = 0; b < a.B; ++b) bases.push_back(const_cast<float*>(layers[src[b]]) + b * a.kv_seq);
  launch_gather_to_bf16(reinterpret_cast<float* const*>(upload_pointers(bases)), s.seq_elems, n, dst, stream_);
}

// layers' gradients += a routed layer's dK (or dV) from scratch, in cudnn_grad_additions' order.
void CudaBackend::add_kv_grad(float* const* layers, const int32_t* src, const AttentionDims& a, const uint16_t* grad) {
  const std::vector<CudnnGradAddition> adds = cudnn_grad_additions(a, src);
  std::vector<void*> bases;
  bases.reserve(adds.size());
  for (const CudnnGradAddition& add : adds) bases.push_back(layers[add.layer] + add.dst_offset);
  const long per = adds.front().elements;
  launch_add_bf16(reinterpret_cast<float* const*>(upload_pointers(bases)), per, per * adds.size(), grad, stream_);
}

void CudaBackend::attention_forward_cudnn(const AttentionForward& p, const AttentionDims& a) {
  const CudnnSdpaKey key = CudnnSdpaKey::of(a, false, false);
  const CudnnScratchLayout s = cudnn_scratch_layout(key, cudnn_->workspace_bytes(key));
  auto* base = static_cast<char*>(scratch(kScratchCudnn, s.total));
  auto* q = reinterpret_cast<uint16_t*>(base + s.q);
  auto* k = reinterpret_cast<uint16_t*>(base + s.k);
  auto* v = reinterpret_cast<uint16_t*>(base + s.v);
  auto* o = reinterpret_cast<uint16_t*>(base + s.o);
  const std::size_t n_q = static_cast<std::size_t>(a.B) * a.Tq * a.q_row;
  launch_float_to_bf16(p.q, q, n_q, stream_);
  kv_to_bf16(p.k_layers, p.src, a, k);
  kv_to_bf16(p.v_layers, p.src, a, v);
  // cuDNN always writes the statistics; without a caller's lse they go to scratch.
  float* stats = p.lse ? p.lse
                       : static_cast<float*>(scratch(kScratchAttnDelta,
                                                     static_cast<std::size_t>(a.B) * a.H * a.Tq * sizeof(float)));
  CudnnSdpaTensors t;
  t.q = q;
  t.k = k;
  t.v = v;
  t.o = o;
  t.stats = stats;
  cudnn_->run(key, t, base + s.workspace);
  launch_bf16_to_float(o, p.out, n_q, stream_);
}

void CudaBackend::attention_backward_cudnn(const AttentionBackward& p, const AttentionDims& a) {
  const CudnnSdpaKey key = CudnnSdpaKey::of(a, true, options_.deterministic);
  const CudnnScratchLayout s = cudnn_scratch_layout(key, cudnn_->workspace_bytes(key));
  auto* base = static_cast<char*>(scratch(kScratchCudnn, s.total));
  auto at = [base](std::size_t off) { return reinterpret_cast<uint16_t*>(base + off); };
  const std::size_t n_q = static_cast<std::size_t>(a.B) * a.Tq * a.q_row;
  launch_float_to_bf16(p.q, at(s.q), n_q, stream_);
  kv_to_bf16(p.k_layers, p.src, a, at(s.k));
  kv_to_bf16(p.v_layers, p.src, a, at(s.v));
  launch_float_to_bf16(p.out, at(s.o), n_q, stream_);  // exact: the forward wrote bf16 values
  launch_float_to_bf16(p.dout, at(s.dout), n_q, stream_);
  CudnnSdpaTensors t;
  t.q = at(s.q);
  t.k = at(s.k);
  t.v = at(s.v);
  t.o = at(s.o);
  t.stats = const_cast<float*>(p.lse);  // read only in the backward graph
  t.dout = at(s.dout);
  t.dq = at(s.dq);
  t.dk = at(s.dk);
  t.dv = at(s.dv);
  cudnn_->run(key, t, base + s.workspace);
  std::vector<void*> dq_base{p.dq};
  launch_add_bf16(reinterpret_cast<float* const*>(upload_pointers(dq_base)), static_cast<long>(n_q), n_q, at(s.dq),
                  stream_);
  add_kv_grad(p.dk_layers, p.src, a, at(s.dk));
  add_kv_grad(p.dv_layers, p.src, a, at(s.dv));
}

}  // namespace kvroute
