// Fuzz target: a token shard (64-byte header + token ids), opened as the data loader opens it:
// header checks, then the full pass (checksum, every id < vocab_size), then ids read.
#include <exception>

#include "fuzz_common.h"
#include "kvroute/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = kvroute_fuzz::scratch_dir() / "train_00000.bin";
  kvroute_fuzz::write_file(path, kvroute_fuzz::as_text(data, size));
  try {
    (void)kvroute::read_shard_header(path.string());
    const auto shard = kvroute::Shard::open(path.string(), kvroute::ShardCheck::header);
    const uint64_t n = shard.size();
    if (n > 0) (void)shard[0], (void)shard[n - 1], (void)shard[n / 2];
    const auto checked = kvroute::Shard::open(path.string(), kvroute::ShardCheck::full);
    for (uint64_t i = 0; i < checked.size() && i < 4096; ++i)
      if (static_cast<uint64_t>(checked[i]) >= checked.header().vocab_size) __builtin_trap();  // verified ids
  } catch (const std::exception&) {
  }
  return 0;
}
