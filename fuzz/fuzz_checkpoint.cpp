// Fuzz target: a checkpoint (HDF5, model.h5 or step_N.h5), opened as `ckpt info`, eval and
// resume open it: the header and tensor list, then the weights (and AdamW moments when
// present) checked against the layout of the config it records.
#include <cstddef>
#include <exception>

#include "fuzz_common.h"
#include "kvroute/checkpoint.h"
#include "kvroute/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = kvroute_fuzz::scratch_dir() / "model.h5";
  kvroute_fuzz::write_file(path, kvroute_fuzz::as_text(data, size));
  try {
    const auto info = kvroute::read_checkpoint_info(path.string());
    (void)info.num_params();
    // The layout comes from the recorded config; a model too large for this harness to allocate
    // is skipped (its weights could not be in a file this small anyway).
    const auto& m = info.config.model;
    if (m.n_layers > 64) return 0;
    const auto layout = kvroute::parameter_layout(m);
    std::size_t floats = 0;
    for (const auto& t : layout) {
      std::size_t n = 1;
      for (int d : t.shape) n *= static_cast<std::size_t>(d > 0 ? d : 0);
      floats += n;
    }
    if (floats > (std::size_t(1) << 24)) return 0;
    const auto contents = kvroute::read_checkpoint(path.string(), m, layout, info.has_optimizer);
    (void)contents.params.size();
  } catch (const std::exception&) {
  }
  return 0;
}
