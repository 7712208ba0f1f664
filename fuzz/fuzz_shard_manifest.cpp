// Fuzz target: a shard directory's manifest.yaml, read as data.shards reads it; the shards it
// lists are then opened (one valid shard, train_00000.bin, sits in the directory).
#include <cstdint>
#include <exception>
#include <vector>

#include "fuzz_common.h"
#include "kvroute/shard.h"
#include "kvroute/shard_dir.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto dir = [] {
    const auto d = kvroute_fuzz::scratch_subdir("shards");
    const std::vector<int32_t> ids = {72, 105, 10, 33, 10};
    kvroute::write_shard((d / "train_00000.bin").string(), ids, 256, 0, 2);
    return d;
  }();
  kvroute_fuzz::write_file(dir / "manifest.yaml", kvroute_fuzz::as_text(data, size));
  try {
    const auto info = kvroute::read_shard_dir(dir.string());
    (void)info.tokens("train"), (void)info.tokens("val"), (void)info.tokenizer_spec();
    for (const auto& e : info.split("train")) {
      const auto shard = kvroute::Shard::open(e.path, kvroute::ShardCheck::full);
      (void)shard.size();
    }
  } catch (const std::exception&) {
  }
  return 0;
}
