// Fuzz target: a Hugging Face config.json, taken as `kvroute import hf` and
// `train --set model.init_from=DIR` take it: parsed, validated as a kvroute model, and the
// model's tensor layout computed (the layout is what import allocates weights for).
#include <exception>
#include <string>

#include "fuzz_common.h"
#include "kvroute/config.h"
#include "kvroute/hf_model.h"
#include "kvroute/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto hf = kvroute::parse_hf_config(std::string(kvroute_fuzz::as_text(data, size)), "fuzz/config.json");
    kvroute::Config cfg;
    cfg.model = hf.model;
    cfg.train.seq_len = 1;  // any model context fits; the model keys are what is checked
    kvroute::validate(cfg);
    const auto layout = kvroute::parameter_layout(cfg.model);
    (void)layout.size();
    // What export would write for it must name a supported architecture or say why not.
    (void)kvroute::hf_architecture_for(cfg.model);
  } catch (const std::exception&) {
  }
  return 0;
}
