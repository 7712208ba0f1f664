#include "kvroute/grad_allreduce.h"

#include <algorithm>
#include <stdexcept>

namespace kvroute {

GradAllreduce::GradAllreduce(Communicator& comm, float* data, std::size_t n, std::size_t bucket_bytes)
    : comm_(comm), data_(data), n_(n) {
  const std::size_t bucket = bucket_bytes / sizeof(float);
  if (bucket == 0) throw std::invalid_argument("gradient all-reduce: bucket_bytes must hold at least one float");
  if (comm.world_size() == 1) return;  // no buckets: nothing to sum
  for (std::size_t end = n; end > 0; end -= std::min(bucket, end)) bucket_begin_.push_back(end - std::min(bucket, end));
  pending_.resize(bucket_begin_.size());
}

GradAllreduce::~GradAllreduce() {
  for (auto& p : pending_)
    if (p) try {
        p->wait();
      } catch (...) {  // destructors must not throw; the error has been reported by whoever unwound
      }
}

void GradAllreduce::start(std::size_t i) {
  const std::size_t end = i == 0 ? n_ : bucket_begin_[i - 1];
  pending_[i] = comm_.allreduce_sum_start(data_ + bucket_begin_[i], end - bucket_begin_[i]);
}

void GradAllreduce::ready_from(std::size_t begin) {
  for (std::size_t i = 0; i < next_; ++i)
    if (pending_[i]) pending_[i]->test();
  for (; next_ < buckets() && bucket_begin_[next_] >= begin; ++next_, ++started_early_) start(next_);
}

std::size_t GradAllreduce::finish() {
  for (; next_ < buckets(); ++next_) start(next_);
  for (auto& p : pending_) {
    p->wait();
    p.reset();
  }
  next_ = 0;
  last_started_early_ = started_early_;
  started_early_ = 0;
  return buckets();
}

std::size_t allreduce_in_buckets(Communicator& comm, float* data, std::size_t n, std::size_t bucket_bytes) {
  return GradAllreduce(comm, data, n, bucket_bytes).finish();
}

}  // namespace kvroute
