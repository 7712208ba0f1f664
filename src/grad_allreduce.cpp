#include "kvroute/grad_allreduce.h"

#include <algorithm>
#include <stdexcept>

namespace kvroute {

std::size_t allreduce_in_buckets(Communicator& comm, float* data, std::size_t n, std::size_t bucket_bytes) {
  if (comm.world_size() == 1) return 0;
  const std::size_t bucket = bucket_bytes / sizeof(float);
  if (bucket == 0) throw std::invalid_argument("allreduce_in_buckets: bucket_bytes must hold at least one float");
  std::size_t calls = 0;
  for (std::size_t off = 0; off < n; off += bucket, ++calls) comm.allreduce_sum(data + off, std::min(bucket, n - off));
  return calls;
}

}  // namespace kvroute
