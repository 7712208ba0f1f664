#include "cpu/bf16_matmul_cpu.h"

#include <oneapi/dnnl/dnnl.hpp>

#include <stdexcept>

#include "kvroute/bf16.h"

namespace kvroute::cpu {
namespace {

// x rounded to bf16: the bits (native path) or the value held in fp32 (emulated path).
void round_to_bf16(const float* x, uint16_t* out, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= (1u << 15))
  for (std::size_t i = 0; i < n; ++i) out[i] = bf16_from_float(x[i]);
}
void round_to_bf16(const float* x, float* out, std::size_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= (1u << 15))
  for (std::size_t i = 0; i < n; ++i) out[i] = float_from_bf16(bf16_from_float(x[i]));
}

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

}  // namespace

std::string onednn_cpu_isa() {
  using isa = dnnl::cpu_isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case isa::sse41: return "sse41";
    case isa::avx: return "avx";
    case isa::avx2: return "avx2";
    case isa::avx2_vnni: return "avx2_vnni";
    case isa::avx512_mic: return "avx512_mic";
    case isa::avx512_mic_4ops: return "avx512_mic_4ops";
    case isa::avx512_core: return "avx512_core";
    case isa::avx512_core_vnni: return "avx512_core_vnni";
    case isa::avx512_core_bf16: return "avx512_core_bf16";
    case isa::avx512_core_amx: return "avx512_core_amx";
    default: return "unknown";
  }
}

bool native_bf16_available() {
  const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

struct Bf16Matmul::Primitive {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul matmul;
};

Bf16Matmul::Bf16Matmul(Bf16Path path) : path_(path) {}
Bf16Matmul::~Bf16Matmul() = default;

Bf16Matmul::Primitive& Bf16Matmul::primitive(const Key& key) {
  auto found = primitives_.find(key);
  if (found != primitives_.end()) return *found->second;
  const auto [M, N, K, trans_a, trans_b, alpha, beta] = key;
  using dt = dnnl::memory::data_type;
  // Row-major operands; a transposed one is the same matrix read with swapped strides.
  const dnnl::memory::desc a({M, K}, dt::bf16, trans_a ? dnnl::memory::dims{1, M} : dnnl::memory::dims{K, 1});
  const dnnl::memory::desc b({K, N}, dt::bf16, trans_b ? dnnl::memory::dims{1, K} : dnnl::memory::dims{N, 1});
  const dnnl::memory::desc c({M, N}, dt::f32, dnnl::memory::dims{N, 1});
  dnnl::primitive_attr attr;
  if (alpha != 1.f) attr.set_output_scales(0, {alpha});
  if (beta != 0.f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  auto p = std::make_unique<Primitive>();
  try {
    p->pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, cpu_engine());
    p->matmul = dnnl::matmul(p->pd);
  } catch (const dnnl::error& e) {
    throw std::runtime_error("matmul (bf16): oneDNN has no bf16 matmul for " + std::to_string(M) + "x" +
                             std::to_string(N) + "x" + std::to_string(K) + ": " + e.what());
  }
  return *primitives_.emplace(key, std::move(p)).first->second;
}

void Bf16Matmul::register_weights(const float* w, std::size_t n) {
  weights_ = n ? w : nullptr;
  n_weights_ = weights_ ? n : 0;
  weights_stale_ = true;
  if (!weights_) {
    weights16_ = {};
    weights32_ = {};
  }
}

void Bf16Matmul::written(const void* dst, std::size_t bytes) {
  if (!weights_ || weights_stale_ || bytes == 0) return;
  const auto* p = static_cast<const char*>(dst);
  const auto* w = reinterpret_cast<const char*>(weights_);
  if (p < w + n_weights_ * sizeof(float) && w < p + bytes) weights_stale_ = true;
}

void Bf16Matmul::freed(const void* p) {
  if (p && p == weights_) register_weights(nullptr, 0);
}

const void* Bf16Matmul::operand(const float* x, std::size_t n, int slot) {
  const bool native = path_ == Bf16Path::Native;
  if (weights_ && x >= weights_ && x + n <= weights_ + n_weights_) {
    if (weights_stale_) {
      if (native) {
        weights16_.resize(n_weights_);
        round_to_bf16(weights_, weights16_.data(), n_weights_);
      } else {
        weights32_.resize(n_weights_);
        round_to_bf16(weights_, weights32_.data(), n_weights_);
      }
      weights_stale_ = false;
    }
    const std::size_t offset = static_cast<std::size_t>(x - weights_);
    return native ? static_cast<const void*>(weights16_.data() + offset) : weights32_.data() + offset;
  }
  if (native) {
    auto& s = scratch16_[slot];
    if (s.size() < n) s.resize(n);
    round_to_bf16(x, s.data(), n);
    return s.data();
  }
  auto& s = scratch32_[slot];
  if (s.size() < n) s.resize(n);
  round_to_bf16(x, s.data(), n);
  return s.data();
}

void Bf16Matmul::matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a,
                        bool trans_b, float alpha, float beta) {
  const void* a = operand(A, static_cast<std::size_t>(M) * K, 0);
  const void* b = operand(B, static_cast<std::size_t>(K) * N, 1);
  if (path_ == Bf16Path::Emulated) {
    const dnnl_status_t status =
        dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, static_cast<const float*>(a),
                   trans_a ? M : K, static_cast<const float*>(b), trans_b ? K : N, beta, C, N);
    if (status != dnnl_success)
      throw std::runtime_error("matmul (bf16, emulated): dnnl_sgemm failed with status " + std::to_string(status));
    return;
  }
  Primitive& p = primitive({M, N, K, trans_a, trans_b, alpha, beta});
  // oneDNN's memory objects take non-const handles; the operands are only read.
  dnnl::memory ma(p.pd.src_desc(), cpu_engine(), const_cast<void*>(a));
  dnnl::memory mb(p.pd.weights_desc(), cpu_engine(), const_cast<void*>(b));
  dnnl::memory mc(p.pd.dst_desc(), cpu_engine(), C);
  dnnl::stream stream(cpu_engine());
  p.matmul.execute(stream, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
  stream.wait();
}

std::string Bf16Matmul::kernel_name(int M, int N, int K, bool trans_a, bool trans_b) {
  if (path_ == Bf16Path::Emulated) return "sgemm on bf16-rounded operands";
  return primitive({M, N, K, trans_a, trans_b, 1.f, 0.f}).pd.impl_info_str();
}

}  // namespace kvroute::cpu
