// Backend dispatch: picks the CPU or CUDA implementation of the op interface.
#include "kvroute/backend.h"

#include <stdexcept>

#include "cpu/bf16_matmul_cpu.h"
#include "cpu/cpu_backend.h"
#include "kvroute/comm.h"

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

ResolvedPrecision resolve_precision(const std::string& backend, const std::string& requested) {
  if (requested != "fp32" && requested != "bf16" && requested != "auto")
    throw std::runtime_error("train.precision: unknown precision '" + requested + "' (expected fp32, bf16 or auto)");
  const bool cpu = backend == "cpu";
  const std::string isa = cpu ? "oneDNN ISA " + cpu::onednn_cpu_isa() : "";
  if (requested == "fp32") return {"fp32", "fp32 as configured"};
  if (requested == "bf16") {
    if (!cpu) return {"bf16", "bf16 as configured"};
    return {"bf16", cpu::native_bf16_available()
                        ? "bf16 as configured; " + isa + " multiplies bf16 natively"
                        : "bf16 as configured; " + isa + " has no native bf16: sgemm on bf16-rounded operands "
                          "(same products, slower than fp32)"};
  }
  if (!cpu) return {"bf16", "auto: CUDA tensor cores multiply bf16"};
  if (cpu::native_bf16_available()) return {"bf16", "auto: " + isa + " multiplies bf16 natively"};
  return {"fp32", "auto: " + isa + " has no native bf16 (needs AMX or AVX512-BF16)"};
}

std::unique_ptr<Backend> make_backend(const std::string& name) { return make_backend(name, BackendOptions{}); }

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options) {
  if (name != "cpu" && name != "cuda") throw std::runtime_error("unknown backend '" + name + "' (expected cpu or cuda)");
  BackendOptions resolved = options;
  resolved.precision = resolve_precision(name, options.precision).precision;
  if (name == "cpu") return std::make_unique<CpuBackend>(resolved);
#ifdef KVROUTE_WITH_CUDA
  if (!cuda_device_present()) throw std::runtime_error("backend 'cuda': no CUDA device is visible on this machine");
  if (resolved.device_ordinal < 0) resolved.device_ordinal = launcher_local_rank();
  return make_cuda_backend(resolved);
#else
  throw std::runtime_error("backend 'cuda': kvroute was built without CUDA (configure with -DKVROUTE_CUDA=ON)");
#endif
}

}  // namespace kvroute
