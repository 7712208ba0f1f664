// A Backend decorator that times every op call of the backend it wraps, for
// `kvroute bench train --profile`. Each call is bracketed by synchronize() so an
// asynchronous backend (CUDA) is timed too; the model code is unchanged.
// Memory management (alloc/free) is forwarded untimed.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kvroute/forwarding_backend.h"

namespace kvroute {

struct OpTiming {
  std::string op;      // the Backend method, e.g. "attention_backward"; matmul is split by
                       // transposes: "matmul[nt]" (A B^T), "matmul[nn]", "matmul[tn]" (A^T B)
  long calls = 0;
  double seconds = 0;  // wall time summed over calls
  // Model FLOPs of those calls, 0 for ops counted as memory-bound: matmul 2*M*N*K; attention
  // forward 4*head_dim*n_heads per visible (query, key) pair, backward twice that (the same
  // accounting as the 6*L*T*d_model per-token term of the bench's FLOP formula).
  double flops = 0;
};

class ProfilingBackend final : public ForwardingBackend {
 public:
  // inner must outlive this object.
  explicit ProfilingBackend(Backend* inner) : ForwardingBackend(inner) {}

  // Totals per op since construction or the last reset(), slowest first.
  std::vector<OpTiming> timings() const;
  void reset() { totals_.clear(); }
  // While disabled, calls are forwarded without timing (e.g. during warm-up).
  void set_enabled(bool on) { enabled_ = on; }

  // Timed with their FLOPs (matmul also split by transposes); every other op of
  // KVROUTE_BACKEND_OPS is timed by around(). Memory management, synchronize and the
  // peak-GEMM probe are forwarded untimed.
  void matmul(const float* A, const float* B, float* C, int M, int N, int K, bool trans_a, bool trans_b,
              float alpha, float beta) override;
  void attention_forward(const AttentionForward& p) override;
  void attention_backward(const AttentionBackward& p) override;

 protected:
  void around(const char* op, const OpCall& call) override;  // times it, with 0 FLOPs

 private:
  // Runs fn between two synchronize() calls and adds its time to op's total.
  template <typename Fn>
  void timed(const char* op, double flops, Fn&& fn);

  bool enabled_ = true;
  std::map<std::string, OpTiming> totals_;
};

// Model FLOPs of one attention forward: 4 * head_dim * n_heads per visible (query, key) pair.
double attention_forward_flops(const AttentionShape& s);

}  // namespace kvroute
