// AdamW with decoupled weight decay (none on norm gains), global-norm gradient
// clipping, and the warmup + cosine learning-rate schedule.
//
// ZeRO stage 1 (train.zero: 1, with a communicator of N > 1 ranks). The parameter
// buffer of P floats is cut into N shards of S = ceil(P / N) floats (the last one
// padded): rank r keeps the AdamW moments of [r*S, min((r+1)*S, P)) only and updates
// only those parameters; the updated shards are then all-gathered so every rank holds
// the same full weights. The gradients are the full, already averaged buffer on every
// rank (stage 1 shards the optimizer state only), so the clipping norm is the global
// one. The update of each element is the same elementwise AdamW as without sharding.
#pragma once

#include <vector>

#include "kvroute/backend.h"
#include "kvroute/config.h"
#include "kvroute/model.h"

namespace kvroute {

class Communicator;

// Linear warmup from 0 over warmup_steps, then cosine decay to lr * min_lr_ratio at `steps`.
// `step` counts from 1.
double learning_rate(const TrainConfig& tc, long step);

class AdamW {
 public:
  // Shards the moments over comm's ranks when tc.zero == 1 and comm has more than one
  // rank; otherwise (comm null, one rank, or zero 0) every rank holds all of them.
  AdamW(const TrainConfig& tc, Model& model, Communicator* comm = nullptr);
  // Clips the global gradient norm to tc.grad_clip (if > 0) and applies one update
  // at learning rate lr (then, sharded, all-gathers the parameters: collective).
  // Returns the gradient norm before clipping.
  double step(double lr);
  // Global L2 norm of the model's gradient buffer.
  double grad_norm() const;
  long steps_taken() const { return t_; }
  void set_steps_taken(long t) { t_ = t; }
  bool sharded() const { return comm_ != nullptr; }
  // The parameter range whose moments this rank holds: [shard_begin, shard_end).
  std::size_t shard_begin() const { return begin_; }
  std::size_t shard_end() const { return end_; }
  // This rank's moments: element i belongs to parameter shard_begin() + i.
  float* m() { return m_.get(); }
  float* v() { return v_.get(); }
  // Host copies of the FULL moments in parameter-buffer order, and their restore
  // (checkpoints). Sharded, m_to_host / v_to_host all-gather the shards: every rank
  // must call them; moments_from_host takes the full moments and keeps this rank's shard.
  std::vector<float> m_to_host() const { return gather_to_host(m_); }
  std::vector<float> v_to_host() const { return gather_to_host(v_); }
  void moments_from_host(const std::vector<float>& m, const std::vector<float>& v);
  std::size_t size() const { return model_.num_params(); }  // parameters covered by the whole state

 private:
  std::vector<float> gather_to_host(const DeviceBuffer<float>& shard) const;
  void allgather_params();

  TrainConfig tc_;
  Model& model_;
  Communicator* comm_ = nullptr;  // non-null only when sharded
  std::size_t begin_ = 0, end_ = 0, shard_ = 0;  // owned range; shard_ = S (padded shard size)
  DeviceBuffer<float> m_, v_;                     // shard_ floats each (num_params unsharded)
  mutable DeviceBuffer<float> staging_;          // N * S floats, when P is not a multiple of N
  long t_ = 0;
};

}  // namespace kvroute
