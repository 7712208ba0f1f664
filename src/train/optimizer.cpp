#include "kvroute/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kvroute/comm.h"

namespace kvroute {

double learning_rate(const TrainConfig& tc, long step) {
  if (tc.warmup_steps > 0 && step <= tc.warmup_steps) return tc.lr * step / tc.warmup_steps;
  const double min_lr = tc.lr * tc.min_lr_ratio;
  const long decay_steps = std::max<long>(1, tc.steps - tc.warmup_steps);
  const double progress = std::clamp(double(step - tc.warmup_steps) / decay_steps, 0.0, 1.0);
  return min_lr + 0.5 * (tc.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

AdamW::AdamW(const TrainConfig& tc, Model& model, Communicator* comm) : tc_(tc), model_(model) {
  const std::size_t P = model.num_params();
  if (tc.zero == 1 && comm && comm->world_size() > 1) {
    comm_ = comm;
    const std::size_t N = static_cast<std::size_t>(comm->world_size());
    const std::size_t r = static_cast<std::size_t>(comm->rank());
    shard_ = (P + N - 1) / N;
    begin_ = std::min(P, r * shard_);
    end_ = std::min(P, begin_ + shard_);
    if (P % N != 0) staging_ = DeviceBuffer<float>(model.backend(), N * shard_);
  } else {
    shard_ = P;
    begin_ = 0;
    end_ = P;
  }
  m_ = DeviceBuffer<float>(model.backend(), shard_);
  v_ = DeviceBuffer<float>(model.backend(), shard_);
}

double AdamW::grad_norm() const {
  return std::sqrt(model_.backend()->sum_squares(model_.grads(), model_.num_params()));
}

void AdamW::moments_from_host(const std::vector<float>& m, const std::vector<float>& v) {
  const std::size_t P = model_.num_params();
  if (m.size() != P || v.size() != P)
    throw std::invalid_argument("AdamW moments: got " + std::to_string(m.size()) + " and " + std::to_string(v.size()) +
                                " floats, the model has " + std::to_string(P) + " parameters");
  Backend* be = model_.backend();
  m_ = DeviceBuffer<float>(be, shard_);  // zero-filled, so a padded tail stays 0
  v_ = DeviceBuffer<float>(be, shard_);
  const std::size_t n = end_ - begin_;
  if (n) {
    be->copy_to_device(m_.get(), m.data() + begin_, n * sizeof(float));
    be->copy_to_device(v_.get(), v.data() + begin_, n * sizeof(float));
  }
}

std::vector<float> AdamW::gather_to_host(const DeviceBuffer<float>& shard) const {
  if (!comm_) return shard.download();
  const std::size_t P = model_.num_params();
  const std::size_t N = static_cast<std::size_t>(comm_->world_size());
  Backend* be = model_.backend();
  DeviceBuffer<float> all(be, N * shard_);
  be->copy(all.get() + comm_->rank() * shard_, shard.get(), shard_ * sizeof(float));
  comm_->allgather_inplace(all.get(), shard_);
  std::vector<float> host = all.download();
  host.resize(P);  // drop the padding
  return host;
}

void AdamW::allgather_params() {
  Backend* be = model_.backend();
  float* params = model_.params();
  if (!staging_.get()) {  // P is a multiple of N: the shards tile the parameter buffer exactly
    comm_->allgather_inplace(params, shard_);
    // The communicator wrote the weights, not a backend op: a bf16 backend must re-round them.
    be->register_weights(params, model_.num_params());
    return;
  }
  be->copy(staging_.get() + comm_->rank() * shard_, params + begin_, (end_ - begin_) * sizeof(float));
  comm_->allgather_inplace(staging_.get(), shard_);
  be->copy(params, staging_.get(), model_.num_params() * sizeof(float));
}

double AdamW::step(double lr) {
  const double norm = grad_norm();
  float grad_scale = 1.f;
  if (tc_.grad_clip > 0 && norm > tc_.grad_clip) grad_scale = static_cast<float>(tc_.grad_clip / norm);
  ++t_;
  Backend* be = model_.backend();
  for (const ParamTensor& t : model_.tensors()) {
    // The part of this tensor inside the owned range (all of it, unsharded).
    const std::size_t lo = std::max(begin_, t.offset), hi = std::min(end_, t.offset + t.numel);
    if (lo >= hi) continue;
    const float wd = t.weight_decay ? static_cast<float>(tc_.weight_decay) : 0.f;
    be->adamw_step(model_.params() + lo, model_.grads() + lo, m_.get() + (lo - begin_), v_.get() + (lo - begin_),
                   hi - lo, static_cast<float>(lr), static_cast<float>(tc_.beta1), static_cast<float>(tc_.beta2),
                   static_cast<float>(tc_.adam_eps), wd, static_cast<int>(t_), grad_scale);
  }
  if (comm_) allgather_params();
  return norm;
}

}  // namespace kvroute
