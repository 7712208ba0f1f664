// Backend dispatch: picks the CPU or CUDA implementation of the op interface.
#include "kvroute/backend.h"

#include <stdexcept>

#include "cpu/cpu_backend.h"

namespace kvroute {

#ifdef KVROUTE_WITH_CUDA
std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& options);  // cuda/cuda_backend.cu
bool cuda_device_present();                                                 // cuda/cuda_backend.cu
#endif

bool cuda_available() {
#ifdef KVROUTE_WITH_CUDA
  return cuda_device_present();
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name) { return make_backend(name, BackendOptions{}); }

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options) {
  if (options.precision != "fp32" && options.precision != "bf16")
    throw std::runtime_error("train.precision: unknown precision '" + options.precision + "' (expected fp32 or bf16)");
  if (name == "cpu") {
    // The CPU backend is fp32 throughout and bitwise deterministic (cpu_backend.h).
    if (options.precision != "fp32")
      throw std::runtime_error("train.precision: " + options.precision +
                               " needs train.backend: cuda; the CPU backend computes in fp32 only "
                               "(set train.precision: fp32)");
    return std::make_unique<CpuBackend>();
  }
  if (name == "cuda") {
#ifdef KVROUTE_WITH_CUDA
    if (!cuda_device_present())
      throw std::runtime_error("backend 'cuda': no CUDA device is visible on this machine");
    return make_cuda_backend(options);
#else
    throw std::runtime_error("backend 'cuda': kvroute was built without CUDA (configure with -DKVROUTE_CUDA=ON)");
#endif
  }
  throw std::runtime_error("unknown backend '" + name + "' (expected cpu or cuda)");
}

}  // namespace kvroute
