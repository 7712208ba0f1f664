// Fuzz target: a YAML config (configs/*.yaml, `train CONFIG...`, the config stored in every
// checkpoint), applied over the defaults and validated; a config that validates must come
// back the same through to_yaml (what checkpoints store and resume reads).
#include <exception>
#include <string>

#include "fuzz_common.h"
#include "kvroute/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvroute::Config cfg;
  try {
    kvroute::apply_config_yaml(cfg, std::string(kvroute_fuzz::as_text(data, size)), "fuzz.yaml");
    kvroute::validate(cfg);
  } catch (const std::exception&) {
    return 0;
  }
  // Past this point an exception is a bug: the resolved config of a valid run must reload.
  const std::string yaml = kvroute::to_yaml(cfg);
  kvroute::Config again;
  kvroute::apply_config_yaml(again, yaml, "fuzz round trip");
  kvroute::validate(again);
  if (kvroute::to_yaml(again) != yaml) __builtin_trap();
  return 0;
}
