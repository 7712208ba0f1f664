// cuDNN fused attention (SDPA) through cudnn-frontend's graph API: cudnn_attention.cpp, built
// when CMake finds cudnn-frontend's headers (scripts/fetch_cudnn_frontend.sh) and cuDNN; a
// build without them links cudnn_attention_absent.cpp, whose create() says why. The host logic
// around it (path choice, cache key, layouts, scratch) is cudnn_attention_plan.h; the casts and
// the dK/dV additions are in cudnn_attention_cuda.cu. No CUDA or cuDNN header here, so the
// tests include it in any build.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "cudnn_attention_plan.h"

struct CUstream_st;  // cudaStream_t

namespace kvroute {

// Device pointers of one SDPA call: bf16 tensors in kvroute's layouts (q/o/dout/dq [B, T, H, D],
// k/v/dk/dv [B, T, Hkv, D], dense) and the fp32 log-sum-exp [B, H, T].
struct CudnnSdpaTensors {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;           // forward: written; backward: read
  float* stats = nullptr;      // forward: written; backward: read
  const void* dout = nullptr;  // backward only
  void* dq = nullptr;          // backward: written, not added
  void* dk = nullptr;
  void* dv = nullptr;
};

class CudnnAttention {
 public:
  // cuDNN on `stream` of the current device; nullptr with *why set when it cannot run here
  // (a build without cuDNN, no GPU or driver, a cuDNN library older than the headers need).
  static std::unique_ptr<CudnnAttention> create(CUstream_st* stream, std::string* why);
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // The cuDNN workspace the graph of `key` needs, building that graph first if it is not
  // cached. Throws std::runtime_error with cuDNN's message when cuDNN cannot run the problem.
  std::size_t workspace_bytes(const CudnnSdpaKey& key);
  // Runs the (cached) graph of `key` on the stream; workspace holds workspace_bytes(key).
  void run(const CudnnSdpaKey& key, const CudnnSdpaTensors& t, void* workspace);
  std::size_t graphs_built() const;

  struct Impl;

 private:
  explicit CudnnAttention(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Builds the graph of `key` as for a GPU of compute capability sm_version (e.g. 90) with
// sm_count SMs and runs cudnn-frontend's validate() on it, with no cuDNN handle, so no GPU or
// driver. Empty on success, else the error ("built without cuDNN" in such a build).
std::string cudnn_validate_sdpa_graph(const CudnnSdpaKey& key, int sm_version, int sm_count);

// Whether this build has the cuDNN path.
bool cudnn_attention_built();

}  // namespace kvroute
