#include "kvroute/attention_bench.h"

#include <chrono>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kvroute/inference.h"  // median
#include "kvroute/profiling_backend.h"  // attention_forward_flops
#include "kvroute/rng.h"

namespace kvroute {

namespace {

using Clock = std::chrono::steady_clock;

DeviceBuffer<float> random_buffer(Backend* be, std::size_t n, uint64_t seed, uint64_t stream) {
  std::vector<float> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = static_cast<float>(uniform01(seed, stream, i) * 2.0 - 1.0);
  DeviceBuffer<float> buf(be, n);
  buf.upload(host);
  return buf;
}

}  // namespace

AttentionBenchRow benchmark_attention(Backend* be, const AttentionBenchSpec& spec, int head_dim) {
  if (spec.batch < 1 || spec.seq_len < 1 || spec.warmup < 0 || spec.repeats < 1)
    throw std::invalid_argument("bench attention: need batch, seq_len and repeats >= 1 and warmup >= 0");
  if (head_dim < 1 || head_dim > 128 || spec.d_model % head_dim != 0)
    throw std::invalid_argument("bench attention: head_dim " + std::to_string(head_dim) +
                                " must be in 1..128 and divide d_model " + std::to_string(spec.d_model));
  AttentionBenchRow r;
  r.head_dim = head_dim;
  r.heads = spec.d_model / head_dim;
  r.batch = spec.batch;
  r.seq_len = spec.seq_len;

  AttentionShape shape;
  shape.B = spec.batch;
  shape.Tq = shape.Tk = spec.seq_len;
  shape.n_heads = shape.n_kv_heads = r.heads;
  shape.head_dim = head_dim;
  shape.scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  r.forward_flops = attention_forward_flops(shape);
  r.backward_flops = 2.5 * r.forward_flops;

  const std::size_t n = static_cast<std::size_t>(spec.batch) * spec.seq_len * spec.d_model;
  DeviceBuffer<float> q = random_buffer(be, n, spec.seed, 1), k = random_buffer(be, n, spec.seed, 2),
                      v = random_buffer(be, n, spec.seed, 3), dout = random_buffer(be, n, spec.seed, 4);
  DeviceBuffer<float> out(be, n), dq(be, n), dk(be, n), dv(be, n);
  DeviceBuffer<float> lse(be, static_cast<std::size_t>(spec.batch) * r.heads * spec.seq_len);
  const float* k_layers[1] = {k.get()};
  const float* v_layers[1] = {v.get()};
  float* dk_layers[1] = {dk.get()};
  float* dv_layers[1] = {dv.get()};
  const std::vector<int32_t> src(spec.batch, 0);  // every sequence reads layer 0: self-attention

  AttentionForward f;
  f.shape = shape;
  f.q = q.get();
  f.k_layers = k_layers;
  f.v_layers = v_layers;
  f.src = src.data();
  f.out = out.get();
  f.lse = lse.get();
  AttentionBackward b = backward_of(f);
  b.dout = dout.get();
  b.dq = dq.get();
  b.dk_layers = dk_layers;
  b.dv_layers = dv_layers;

  // Each call between two synchronize(): the op's device time plus one launch and sync.
  auto timed = [&](auto&& call) {
    be->synchronize();
    const auto t0 = Clock::now();
    call();
    be->synchronize();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  for (int i = 0; i < spec.warmup; ++i) {
    be->attention_forward(f);
    be->attention_backward(b);
  }
  for (int i = 0; i < spec.repeats; ++i) {
    r.forward_seconds.push_back(timed([&] { be->attention_forward(f); }));
    // Backward adds into dq/dK/dV: repeated calls only grow the sums (the time is what counts).
    r.backward_seconds.push_back(timed([&] { be->attention_backward(b); }));
  }
  r.forward_median_seconds = median(r.forward_seconds);
  r.backward_median_seconds = median(r.backward_seconds);
  r.forward_tflops = r.forward_flops / r.forward_median_seconds / 1e12;
  r.backward_tflops = r.backward_flops / r.backward_median_seconds / 1e12;
  return r;
}

}  // namespace kvroute
