// The cuDNN attention of a CUDA build without cuDNN or without cudnn-frontend's headers
// (CMake says which at configure time): create() says why, and the backend keeps its own
// attention kernels.
#include "cudnn_attention.h"

#include <stdexcept>

namespace kvroute {

struct CudnnAttention::Impl {};

CudnnAttention::CudnnAttention(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudnnAttention::~CudnnAttention() = default;

std::unique_ptr<CudnnAttention> CudnnAttention::create(CUstream_st*, std::string* why) {
  *why = "kvroute was built without cuDNN (cudnn-frontend's headers: scripts/fetch_cudnn_frontend.sh)";
  return nullptr;
}

std::size_t CudnnAttention::workspace_bytes(const CudnnSdpaKey&) {
  throw std::logic_error("CudnnAttention: built without cuDNN");
}
void CudnnAttention::run(const CudnnSdpaKey&, const CudnnSdpaTensors&, void*) {
  throw std::logic_error("CudnnAttention: built without cuDNN");
}
std::size_t CudnnAttention::graphs_built() const { return 0; }

std::string cudnn_validate_sdpa_graph(const CudnnSdpaKey&, int, int) { return "built without cuDNN"; }

bool cudnn_attention_built() { return false; }

}  // namespace kvroute
