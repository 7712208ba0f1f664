// train.precision: bf16 on the CPU: matmul operands rounded to bf16 (round to nearest even),
// products accumulated and written in fp32: the same contract as the CUDA backend.
//
// Two paths compute it:
// - native: oneDNN's matmul primitive on bf16 buffers, which runs on the CPU's matrix engines
//   (AMX tiles on Xeon since Sapphire Rapids, AVX512-BF16 dot products on Zen 4/5 and Xeon
//   since Cooper Lake). One primitive per problem shape, cached.
// - emulated, on CPUs without native bf16: the operands rounded to bf16 values held in fp32,
//   then the fp32 sgemm. The products are the same; only the summation order differs.
//
// The model's weights (one contiguous buffer) are registered once; their rounded copy is
// refreshed on the first matmul after anything wrote into the buffer (an optimizer step, a
// checkpoint load), so weights are rounded once per step, not once per matmul. Activations
// are rounded on every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace kvroute::cpu {

enum class Bf16Path { Native, Emulated };

// oneDNN's effective CPU ISA, by its name ("avx512_core_amx", "avx2", ...): what its JIT
// kernels use on this machine, after ONEDNN_MAX_CPU_ISA.
std::string onednn_cpu_isa();
// True where oneDNN multiplies bf16 natively: its effective ISA is avx512_core_bf16 or
// avx512_core_amx.
bool native_bf16_available();

class Bf16Matmul {
 public:
  explicit Bf16Matmul(Bf16Path path);
  ~Bf16Matmul();
  Bf16Path path() const { return path_; }

  // C[M,N] = alpha * bf16(op(A)) * bf16(op(B)) + beta * C, as CpuBackend::matmul; M, N, K > 0.
  void matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a, bool trans_b,
              float alpha, float beta);

  // The buffer of weights whose rounded copy is kept (nullptr, 0: none).
  void register_weights(const float* w, std::size_t n);
  // Something wrote bytes at dst: a kept copy that overlaps it is stale.
  void written(const void* dst, std::size_t bytes);
  // p is being freed: forget a registration of it.
  void freed(const void* p);

  // The kernel oneDNN chose for an M x N x K problem ("brg:avx512_core_amx_bf16"), or "sgemm on
  // bf16-rounded operands" on the emulated path.
  std::string kernel_name(int M, int N, int K, bool trans_a, bool trans_b);

 private:
  struct Primitive;
  using Key = std::tuple<int, int, int, bool, bool, float, float>;
  Primitive& primitive(const Key& key);
  // The operand in bf16 (native path) or bf16-rounded fp32 (emulated): the weights' kept copy
  // when x lies in the registered buffer, else x rounded into scratch slot `slot`.
  const void* operand(const float* x, std::size_t n, int slot);

  Bf16Path path_;
  std::map<Key, std::unique_ptr<Primitive>> primitives_;
  std::vector<uint16_t> scratch16_[2];
  std::vector<float> scratch32_[2];
  const float* weights_ = nullptr;
  std::size_t n_weights_ = 0;
  bool weights_stale_ = true;
  std::vector<uint16_t> weights16_;
  std::vector<float> weights32_;
};

}  // namespace kvroute::cpu
