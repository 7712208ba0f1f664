// Fuzz target: model.safetensors.index.json of a sharded model (its "weight_map" names the
// shard file of each tensor). Empty shard files named as a three-shard model names them sit
// beside it, so valid maps resolve.
#include <exception>

#include "fuzz_common.h"
#include "kvroute/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto dir = [] {
    const auto d = kvroute_fuzz::scratch_subdir("model");
    for (const char* f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                          "model-00003-of-00003.safetensors"})
      kvroute_fuzz::write_file(d / f, "");
    return d;
  }();
  const auto path = dir / "model.safetensors.index.json";
  kvroute_fuzz::write_file(path, kvroute_fuzz::as_text(data, size));
  try {
    const auto map = kvroute::read_safetensors_index(path.string());
    for (const auto& [tensor, file] : map) (void)tensor.size(), (void)file.size();
  } catch (const std::exception&) {
  }
  return 0;
}
