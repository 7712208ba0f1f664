#include "kvroute/train_bench.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <stdexcept>

#include "kvroute/evaluate.h"
#include "kvroute/inference.h"  // median
#include "kvroute/model.h"
#include "kvroute/optimizer.h"
#include "kvroute/rng.h"
#include "kvroute/routing.h"

namespace kvroute {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One n x n x n GEMM, timed: the backend's own probe (Backend::peak_gemm_flops: the CUDA
// backend's bf16 GEMM) or else matmul() on fp32 operands allocated on first use.
class MatmulProbe {
 public:
  MatmulProbe(Backend* be, int n) : be_(be), n_(n) {}
  double flops_per_second() {
    be_->synchronize();
    if (const double own = be_->peak_gemm_flops(n_); own > 0) return own;
    if (!a_.get()) {
      a_ = DeviceBuffer<float>(be_, std::size_t(n_) * n_);
      b_ = DeviceBuffer<float>(be_, a_.size());
      c_ = DeviceBuffer<float>(be_, a_.size());
      std::vector<float> host(a_.size());
      for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(uniform01(7, 0, i) - 0.5);
      a_.upload(host);
      b_.upload(host);
      be_->matmul(a_.get(), b_.get(), c_.get(), n_, n_, n_, false, false, 1.f, 0.f);  // untimed first call
    }
    be_->synchronize();
    const auto t0 = Clock::now();
    be_->matmul(a_.get(), b_.get(), c_.get(), n_, n_, n_, false, false, 1.f, 0.f);
    be_->synchronize();
    return 2.0 * n_ * n_ * n_ / seconds_since(t0);
  }

 private:
  Backend* be_;
  int n_;
  DeviceBuffer<float> a_, b_, c_;
};

// Random tokens (and next-token targets) for micro-batch `index`.
void synthetic_batch(std::vector<int32_t>& inputs, std::vector<int32_t>& targets, int vocab, uint64_t seed,
                     uint64_t index) {
  const std::size_t n = inputs.size();
  for (std::size_t i = 0; i < n; ++i) {
    inputs[i] = static_cast<int32_t>(uniform_int(seed, 1000 + index, i, vocab));
    targets[i] = static_cast<int32_t>(uniform_int(seed, 1000 + index, n + i, vocab));
  }
}

}  // namespace

double training_flops_per_token(const ModelConfig& m, long params, int seq_len) {
  const long embed = m.tie_embeddings ? 0 : static_cast<long>(m.vocab_size) * m.d_model;
  const double attention_width = double(m.n_heads) * resolved_head_dim(m);  // d_model unless head_dim says otherwise
  return 6.0 * static_cast<double>(params - embed) + 6.0 * m.n_layers * double(seq_len) * attention_width;
}

double measure_matmul_flops(Backend* backend, int n, int repeats) {
  if (n <= 0 || repeats <= 0) throw std::invalid_argument("measure_matmul_flops: need n > 0 and repeats > 0");
  MatmulProbe probe(backend, n);
  probe.flops_per_second();
  std::vector<double> r;
  for (int i = 0; i < repeats; ++i) r.push_back(probe.flops_per_second());
  return median(r);
}

TrainBenchResult benchmark_training(const Config& cfg, Backend* backend, const TrainBenchSpec& spec) {
  if (spec.steps < 1) throw std::invalid_argument("bench train: --steps must be >= 1");
  if (spec.warmup_steps < 0) throw std::invalid_argument("bench train: --warmup must be >= 0");
  if (spec.peak_size < 0) throw std::invalid_argument("bench train: --peak-size must be >= 0");
  const TrainConfig& tc = cfg.train;
  const int B = tc.batch_size, T = tc.seq_len, L = cfg.model.n_layers;

  // With --profile the model runs on a timing wrapper, enabled only during the timed steps.
  std::unique_ptr<ProfilingBackend> profiler;
  if (spec.profile) {
    profiler = std::make_unique<ProfilingBackend>(backend);
    profiler->set_enabled(false);
  }
  Backend* be = profiler ? profiler.get() : backend;

  Model model(cfg.model, be);
  model.set_recompute(tc.recompute);
  model.init_weights(spec.seed);
  AdamW opt(tc, model);
  std::unique_ptr<MatmulProbe> probe;
  if (spec.peak_size > 0) probe = std::make_unique<MatmulProbe>(backend, spec.peak_size);
  std::unique_ptr<Backend> fp32_backend;
  std::unique_ptr<MatmulProbe> fp32_probe;
  if (spec.peak_size > 0 && resolve_precision(tc.backend, tc.precision).precision == "bf16") {
    fp32_backend = make_backend(tc.backend, BackendOptions{"fp32", tc.deterministic});
    fp32_probe = std::make_unique<MatmulProbe>(fp32_backend.get(), spec.peak_size);
  }

  TrainBenchResult r;
  r.params = static_cast<long>(model.num_params());
  r.tokens_per_step = static_cast<long>(B) * T * tc.grad_accum;
  r.flops_per_token = training_flops_per_token(cfg.model, r.params, T);

  std::vector<int32_t> inputs(static_cast<std::size_t>(B) * T), targets(inputs.size());
  uint64_t micro_index = 0;
  auto train_step = [&](long step) {
    model.zero_grads();
    double loss = 0;
    for (int micro = 0; micro < tc.grad_accum; ++micro) {
      synthetic_batch(inputs, targets, cfg.model.vocab_size, spec.seed, micro_index++);
      const RouteTable routes = sample_routes(cfg.routing, B, L, spec.seed, step, micro);
      loss += model.forward_backward(inputs.data(), targets.data(), B, T, routes, 1.f / tc.grad_accum);
    }
    opt.step(learning_rate(tc, step));
    be->synchronize();
    return static_cast<float>(loss / tc.grad_accum);
  };

  long step = 0;
  if (probe) probe->flops_per_second();  // untimed: first-call setup
  if (fp32_probe) fp32_probe->flops_per_second();
  for (int i = 0; i < spec.warmup_steps; ++i) train_step(++step);
  if (profiler) profiler->set_enabled(true);
  for (int i = 0; i < spec.steps; ++i) {
    const auto t0 = Clock::now();
    r.losses.push_back(train_step(++step));
    r.step_seconds.push_back(seconds_since(t0));
    if (probe) r.peak_flops.push_back(probe->flops_per_second());  // on the unwrapped backend: not profiled
    if (fp32_probe) r.fp32_peak_flops.push_back(fp32_probe->flops_per_second());
  }
  if (profiler) profiler->set_enabled(false);

  r.median_step_seconds = median(r.step_seconds);
  r.tokens_per_second = r.tokens_per_step / r.median_step_seconds;
  r.achieved_flops = r.flops_per_token * r.tokens_per_second;
  r.peak_flops_median = median(r.peak_flops);
  r.mfu = r.peak_flops_median > 0 ? r.achieved_flops / r.peak_flops_median : 0;
  if (!r.fp32_peak_flops.empty()) r.fp32_peak_flops_median = median(r.fp32_peak_flops);
  r.activation_bytes = model.activation_bytes();
  r.activation_bytes_per_token = double(r.activation_bytes) / (double(B) * T);
  r.peak_rss_kib = peak_rss_kib();
  r.device_memory = backend->memory();
  if (profiler) r.profile = profiler->timings();
  return r;
}

}  // namespace kvroute
