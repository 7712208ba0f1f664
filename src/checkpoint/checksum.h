// CRC-32 (the zlib/IEEE polynomial) of a byte range, computed over fixed
// blocks in parallel and combined, so the value equals zlib's crc32 of the
// whole range for any thread count.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvroute {

uint32_t crc32_of(const void* data, std::size_t bytes);

}  // namespace kvroute
