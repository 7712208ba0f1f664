// Data-parallel gradient averaging. The model's gradients are one contiguous
// buffer (Model::grads()), so they are reduced in a few large buckets of at most
// bucket_bytes each (25 MiB by default, as in PyTorch DDP) rather than one call per
// tensor: few calls keep the per-call latency negligible, and a bounded bucket
// keeps each call's temporary buffers in the MPI library bounded too.
#pragma once

#include <cstddef>

#include "kvroute/comm.h"

namespace kvroute {

inline constexpr std::size_t kGradBucketBytes = std::size_t(25) << 20;

// data[i] = sum over ranks of data[i], in place, in ceil(n * 4 / bucket_bytes)
// allreduce calls over consecutive ranges. Returns the number of calls (0 for a
// world of one: nothing to do). The caller scales the gradients by 1 / world
// (the trainer folds this into the loss scale of backward).
std::size_t allreduce_in_buckets(Communicator& comm, float* data, std::size_t n,
                                 std::size_t bucket_bytes = kGradBucketBytes);

}  // namespace kvroute
