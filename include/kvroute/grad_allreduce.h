// Data-parallel gradient averaging. The model's gradients are one contiguous
// buffer (Model::grads()), so they are reduced in a few large buckets of at most
// bucket_bytes each (25 MiB by default, as in PyTorch DDP) rather than one call per
// tensor: few calls keep the per-call latency negligible, and a bounded bucket
// keeps each call's temporary buffers in the MPI library bounded too.
//
// Overlap with backward: backward finishes the gradients from the end of the buffer
// (output head, last layer) towards its start (first layer, embedding), so buckets are
// cut from the end, and each one's sum is started as soon as backward has finished
// every gradient in it (GradAllreduce::ready_from, Model's GradsReady hook). The bucket
// boundaries never depend on timing, so the sums are the same with or without overlap.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "kvroute/comm.h"

namespace kvroute {

inline constexpr std::size_t kGradBucketBytes = std::size_t(25) << 20;

// One step's sum over ranks of data[0, n), in buckets.
class GradAllreduce {
 public:
  // Throws std::invalid_argument when bucket_bytes cannot hold one float.
  GradAllreduce(Communicator& comm, float* data, std::size_t n, std::size_t bucket_bytes = kGradBucketBytes);
  ~GradAllreduce();  // waits for any sum still running (the buffer must outlive it)
  GradAllreduce(const GradAllreduce&) = delete;
  GradAllreduce& operator=(const GradAllreduce&) = delete;

  // data[begin, n) is final for this step: starts every bucket inside it that has not started
  // yet, and lets the ones already running advance. Calls with a larger begin than an earlier
  // one start nothing.
  void ready_from(std::size_t begin);
  // Starts the buckets left, waits for all: data[i] holds the sum over ranks. Then the next step
  // may begin with ready_from again. Returns the number of buckets, 0 for a world of one.
  std::size_t finish();

  std::size_t buckets() const { return bucket_begin_.size(); }
  // Of the buckets the last finish() completed, how many ready_from had started before it.
  std::size_t started_early() const { return last_started_early_; }

 private:
  void start(std::size_t i);

  Communicator& comm_;
  float* data_;
  std::size_t n_;
  std::vector<std::size_t> bucket_begin_;  // bucket i = [bucket_begin_[i], bucket_end(i)), i = 0 at the end
  std::vector<std::unique_ptr<PendingCollective>> pending_;
  std::size_t next_ = 0;                   // first bucket not started yet
  std::size_t started_early_ = 0, last_started_early_ = 0;
};

// data[i] = sum over ranks of data[i], in place, in ceil(n * 4 / bucket_bytes) buckets
// (GradAllreduce with nothing started early). Returns the number of buckets (0 for a world of
// one: nothing to do). The caller scales the gradients by 1 / world (the trainer folds this
// into the loss scale of backward).
std::size_t allreduce_in_buckets(Communicator& comm, float* data, std::size_t n,
                                 std::size_t bucket_bytes = kGradBucketBytes);

}  // namespace kvroute
