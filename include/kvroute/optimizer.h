// AdamW with decoupled weight decay (none on norm gains), global-norm gradient
// clipping, and the warmup + cosine learning-rate schedule.
#pragma once

#include "kvroute/backend.h"
#include "kvroute/config.h"
#include "kvroute/model.h"

namespace kvroute {

// Linear warmup from 0 over warmup_steps, then cosine decay to lr * min_lr_ratio at `steps`.
// `step` counts from 1.
double learning_rate(const TrainConfig& tc, long step);

class AdamW {
 public:
  AdamW(const TrainConfig& tc, Model& model);
  // Clips the global gradient norm to tc.grad_clip (if > 0) and applies one update
  // at learning rate lr. Returns the gradient norm before clipping.
  double step(double lr);
  // Global L2 norm of the model's gradient buffer.
  double grad_norm() const;
  long steps_taken() const { return t_; }
  void set_steps_taken(long t) { t_ = t; }
  float* m() { return m_.get(); }
  float* v() { return v_.get(); }
  // Host copies of the moments in parameter-buffer order, and their restore (checkpoints).
  std::vector<float> m_to_host() const { return m_.download(); }
  std::vector<float> v_to_host() const { return v_.download(); }
  void moments_from_host(const std::vector<float>& m, const std::vector<float>& v);
  std::size_t size() const { return m_.size(); }

 private:
  TrainConfig tc_;
  Model& model_;
  DeviceBuffer<float> m_, v_;
  long t_ = 0;
};

}  // namespace kvroute
