#include "kvroute/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace kvroute {

double learning_rate(const TrainConfig& tc, long step) {
  if (tc.warmup_steps > 0 && step <= tc.warmup_steps) return tc.lr * step / tc.warmup_steps;
  const double min_lr = tc.lr * tc.min_lr_ratio;
  const long decay_steps = std::max<long>(1, tc.steps - tc.warmup_steps);
  const double progress = std::clamp(double(step - tc.warmup_steps) / decay_steps, 0.0, 1.0);
  return min_lr + 0.5 * (tc.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

AdamW::AdamW(const TrainConfig& tc, Model& model)
    : tc_(tc), model_(model), m_(model.backend(), model.num_params()), v_(model.backend(), model.num_params()) {}

double AdamW::grad_norm() const {
  return std::sqrt(model_.backend()->sum_squares(model_.grads(), model_.num_params()));
}

void AdamW::moments_from_host(const std::vector<float>& m, const std::vector<float>& v) {
  if (m.size() != m_.size() || v.size() != v_.size())
    throw std::invalid_argument("AdamW moments: got " + std::to_string(m.size()) + " and " + std::to_string(v.size()) +
                                " floats, the model has " + std::to_string(m_.size()) + " parameters");
  m_.upload(m);
  v_.upload(v);
}

double AdamW::step(double lr) {
  const double norm = grad_norm();
  float grad_scale = 1.f;
  if (tc_.grad_clip > 0 && norm > tc_.grad_clip) grad_scale = static_cast<float>(tc_.grad_clip / norm);
  ++t_;
  Backend* be = model_.backend();
  for (const ParamTensor& t : model_.tensors()) {
    const float wd = t.weight_decay ? static_cast<float>(tc_.weight_decay) : 0.f;
    be->adamw_step(model_.params() + t.offset, model_.grads() + t.offset, m_.get() + t.offset,
                   v_.get() + t.offset, t.numel, static_cast<float>(lr), static_cast<float>(tc_.beta1),
                   static_cast<float>(tc_.beta2), static_cast<float>(tc_.adam_eps), wd, static_cast<int>(t_),
                   grad_scale);
  }
  return norm;
}

}  // namespace kvroute
