// Backend dispatch: picks the CPU or CUDA implementation of the op interface.
#include "kvroute/backend.h"

#include <stdexcept>

#include "cpu/cpu_backend.h"

namespace kvroute {

#ifdef KVROUTE_WITH_CUDA
std::unique_ptr<Backend> make_cuda_backend();  // cuda/cuda_backend.cu
bool cuda_device_present();                    // cuda/cuda_backend.cu
#endif

bool cuda_available() {
#ifdef KVROUTE_WITH_CUDA
  return cuda_device_present();
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name) {
  if (name == "cpu") return std::make_unique<CpuBackend>();
  if (name == "cuda") {
#ifdef KVROUTE_WITH_CUDA
    if (!cuda_device_present())
      throw std::runtime_error("backend 'cuda': no CUDA device is visible on this machine");
    return make_cuda_backend();
#else
    throw std::runtime_error("backend 'cuda': kvroute was built without CUDA (configure with -DKVROUTE_CUDA=ON)");
#endif
  }
  throw std::runtime_error("unknown backend '" + name + "' (expected cpu or cuda)");
}

}  // namespace kvroute
