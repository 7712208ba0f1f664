// Fuzz target: a .safetensors file (8-byte length, JSON header, tensor data), opened and read
// as `kvroute import hf` does: the header checks, then every tensor widened to fp32.
#include <exception>

#include "fuzz_common.h"
#include "kvroute/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = kvroute_fuzz::scratch_dir() / "model.safetensors";
  kvroute_fuzz::write_file(path, kvroute_fuzz::as_text(data, size));
  try {
    const kvroute::SafetensorsFile file(path.string());
    for (const auto& [key, value] : file.metadata()) (void)key.size(), (void)value.size();
    for (const auto& e : file.tensors()) {
      if (file.find(e.name) != &e) __builtin_trap();  // the index must point at the entry listed
      try {
        const auto values = file.read_f32(e.name);  // bounded by the file's size (checked at open)
        if (values.size() != e.numel()) __builtin_trap();
      } catch (const std::exception&) {
        // an unsupported dtype: a clean error
      }
      file.drop_pages(e.name);
    }
  } catch (const std::exception&) {
    // a clean error is the expected outcome for a damaged file
  }
  return 0;
}
