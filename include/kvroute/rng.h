// Counter-based random numbers: every draw is a pure function of
// (seed, stream, counter), so nothing needs to be saved to reproduce a run.
#pragma once

#include <cmath>
#include <cstdint>

namespace kvroute {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t hash_u64(uint64_t seed, uint64_t stream, uint64_t counter) {
  return splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ counter);
}

// Uniform in [0, 1).
inline double uniform01(uint64_t seed, uint64_t stream, uint64_t counter) {
  return (hash_u64(seed, stream, counter) >> 11) * (1.0 / 9007199254740992.0);
}

// Uniform integer in [0, n).
inline uint64_t uniform_int(uint64_t seed, uint64_t stream, uint64_t counter, uint64_t n) {
  return static_cast<uint64_t>(uniform01(seed, stream, counter) * static_cast<double>(n));
}

// Standard normal (Box-Muller over two counter draws).
inline double normal01(uint64_t seed, uint64_t stream, uint64_t counter) {
  double u1 = uniform01(seed, stream, 2 * counter);
  double u2 = uniform01(seed, stream, 2 * counter + 1);
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// Named streams keep unrelated draws independent.
enum RngStream : uint64_t {
  kStreamInit = 1,
  kStreamRouting = 2,
  kStreamData = 3,
  kStreamSample = 4,
};

}  // namespace kvroute
