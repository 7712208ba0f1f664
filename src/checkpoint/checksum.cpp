#include "checkpoint/checksum.h"

#include <zlib.h>

#include <vector>

namespace kvroute {

uint32_t crc32_of(const void* data, std::size_t bytes) {
  constexpr std::size_t kBlock = std::size_t(4) << 20;
  const auto* p = static_cast<const unsigned char*>(data);
  const std::size_t n_blocks = (bytes + kBlock - 1) / kBlock;
  std::vector<uLong> crcs(n_blocks);
#pragma omp parallel for schedule(static) if (n_blocks > 1)
  for (std::size_t b = 0; b < n_blocks; ++b) {
    const std::size_t len = b + 1 < n_blocks ? kBlock : bytes - b * kBlock;
    crcs[b] = crc32_z(crc32_z(0, nullptr, 0), p + b * kBlock, len);
  }
  uLong crc = crc32_z(0, nullptr, 0);
  for (std::size_t b = 0; b < n_blocks; ++b) {
    const std::size_t len = b + 1 < n_blocks ? kBlock : bytes - b * kBlock;
    crc = crc32_combine(crc, crcs[b], static_cast<z_off_t>(len));
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace kvroute
