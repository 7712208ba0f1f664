// CPU backend ops against naive double references (tests/reference_ops.h) and
// central finite differences of those references.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/cpu_math.h"
#include "kvroute/backend.h"
#include "reference_ops.h"

namespace kvroute {
namespace {

using ref::Vec;
using Floats = std::vector<float>;

Floats random_floats(std::size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  Floats x(n);
  for (float& v : x) v = dist(gen);
  return x;
}

Vec to_double(const Floats& x) { return Vec(x.begin(), x.end()); }

// Every element within atol + rtol * |expected|; reports the first offender.
template <typename A, typename E>
void expect_close(const std::vector<A>& actual, const std::vector<E>& expected, double rtol, double atol,
                  const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(static_cast<double>(actual[i]) - static_cast<double>(expected[i]));
    if (!(err <= atol + rtol * std::abs(static_cast<double>(expected[i])))) {
      if (bad++ == 0) first = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << actual.size() << " mismatch; first at " << first
                     << ": actual " << actual[first] << " expected " << expected[first];
}

double max_abs(const Vec& x) {
  double m = 0;
  for (double v : x) m = std::max(m, std::abs(v));
  return m;
}

// Central differences of a scalar function of a double vector, one element at a time.
Vec finite_diff(Vec& x, const std::function<double()>& loss, double h = 1e-5) {
  Vec grad(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = loss();
    x[i] = saved - h;
    const double down = loss();
    x[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

Floats plus(const Floats& base, const Vec& delta) {
  Floats r(base.size());
  for (std::size_t i = 0; i < base.size(); ++i) r[i] = static_cast<float>(base[i] + delta[i]);
  return r;
}

// ---------------------------------------------------------------- memory

TEST(CpuMemory, AllocIsZeroedAndAligned) {
  CpuBackend be;
  for (std::size_t bytes : {1u, 7u, 4096u, 100000u}) {
    auto* p = static_cast<unsigned char*>(be.alloc_bytes(bytes));
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    for (std::size_t i = 0; i < bytes; ++i) ASSERT_EQ(p[i], 0) << "byte " << i;
    be.free_bytes(p);
  }
  EXPECT_EQ(be.alloc_bytes(0), nullptr);
  be.free_bytes(nullptr);
}

TEST(CpuMemory, CopiesAndVectorOps) {
  auto be = make_backend("cpu");
  EXPECT_EQ(be->name(), "cpu");
  EXPECT_EQ(be->device(), Device::CPU);
  const std::size_t n = 100003;  // above the parallel threshold, odd tail
  const Floats a = random_floats(n, 1), b = random_floats(n, 2);
  DeviceBuffer<float> da(be.get(), n), db(be.get(), n), dy(be.get(), n);
  da.upload(a);
  be->copy(db.get(), da.get(), n * sizeof(float));
  EXPECT_EQ(db.download(), a);
  db.upload(b);

  be->add(dy.get(), da.get(), db.get(), n);
  Floats y = dy.download();
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], a[i] + b[i]);
  be->accumulate(dy.get(), da.get(), n);
  y = dy.download();
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], (a[i] + b[i]) + a[i]);
  be->scale(da.get(), n, -0.5f);
  y = da.download();
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], a[i] * -0.5f);

  double ss = 0;
  for (float v : b) ss += static_cast<double>(v) * v;
  EXPECT_NEAR(be->sum_squares(db.get(), n), ss, 1e-12 * ss);
  EXPECT_EQ(be->sum_squares(db.get(), 0), 0.0);

  be->fill_zero(db.get(), n * sizeof(float));
  EXPECT_EQ(be->sum_squares(db.get(), n), 0.0);
}

TEST(CpuMemory, SumSquaresIndependentOfThreadCount) {
  CpuBackend be;
  const Floats x = random_floats(300001, 3);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = be.sum_squares(x.data(), x.size());
  omp_set_num_threads(std::max(2, saved));
  const double many = be.sum_squares(x.data(), x.size());
  omp_set_num_threads(saved);
  EXPECT_EQ(one, many);
}

TEST(CpuMath, FastExpMatchesStdExp) {
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f + 175.0f * i / 200000.0f;
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(cpu::fast_exp(x) - want) / want);
  }
  EXPECT_LT(worst, 4e-7);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(cpu::fast_exp(0.f), 1.0f);
  EXPECT_EQ(cpu::fast_exp(-inf), 0.0f);
  EXPECT_EQ(cpu::fast_exp(-100.f), 0.0f);
  EXPECT_EQ(cpu::fast_exp(100.f), inf);
  EXPECT_EQ(cpu::fast_exp(inf), inf);
  EXPECT_TRUE(std::isnan(cpu::fast_exp(std::numeric_limits<float>::quiet_NaN())));
}

TEST(CpuMath, VectorExpHelpersMatchScalar) {
  // Vector body plus a scalar tail; the vector and scalar paths must agree exactly.
  Floats x = random_floats(203, 40, 5.f);
  x[3] = -std::numeric_limits<float>::infinity();
  x[100] = -200.f;
  const float shift = 1.5f, scale = 0.25f;
  double want_sum = 0;
  Floats want(x.size());
  for (std::size_t j = 0; j < x.size(); ++j) {
    want[j] = scale * cpu::fast_exp(x[j] - shift);
    want_sum += cpu::fast_exp(x[j] - shift);
  }
  EXPECT_NEAR(cpu::sum_exp_shifted(x.data(), static_cast<int>(x.size()), shift), want_sum, 1e-5 * want_sum);
  Floats y = x;  // in place
  const float sum = cpu::exp_shifted(y.data(), y.data(), static_cast<int>(y.size()), shift, scale);
  EXPECT_NEAR(sum, want_sum, 1e-5 * want_sum);
  EXPECT_EQ(y, want);
  EXPECT_EQ(y[3], 0.f);
  EXPECT_EQ(y[100], 0.f);
}

// ---------------------------------------------------------------- matmul

TEST(CpuMatmul, AllTransposeCombosWithAlphaBeta) {
  CpuBackend be;
  const int M = 37, N = 29, K = 53;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Floats A = random_floats(M * K, 10 + ta), B = random_floats(K * N, 20 + tb);
      Floats C = random_floats(M * N, 30);
      Vec want = to_double(C);
      ref::matmul(to_double(A), to_double(B), want, M, N, K, ta, tb, 0.7, 0.3);
      be.matmul(A.data(), B.data(), C.data(), M, N, K, ta, tb, 0.7f, 0.3f);
      expect_close(C, want, 1e-5, 1e-5, "matmul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
    }
}

TEST(CpuMatmul, BetaZeroIgnoresGarbageAndEmptyDims) {
  CpuBackend be;
  const int M = 8, N = 5, K = 3;
  const Floats A = random_floats(M * K, 1), B = random_floats(K * N, 2);
  Floats C(M * N, std::numeric_limits<float>::quiet_NaN());
  Vec want(M * N, 0.0);
  ref::matmul(to_double(A), to_double(B), want, M, N, K, false, false, 1.0, 0.0);
  be.matmul(A.data(), B.data(), C.data(), M, N, K, false, false, 1.f, 0.f);
  expect_close(C, want, 1e-6, 1e-6, "beta=0");

  Floats D(M * N, 2.f);
  be.matmul(nullptr, nullptr, D.data(), M, N, 0, false, false, 1.f, 0.5f);  // K == 0: C = beta * C
  for (float v : D) EXPECT_EQ(v, 1.f);
  be.matmul(nullptr, nullptr, nullptr, 0, N, K, false, false, 1.f, 0.f);  // M == 0: no-op
  EXPECT_THROW(be.matmul(A.data(), B.data(), C.data(), -1, N, K, false, false, 1.f, 0.f),
               std::invalid_argument);
}

// ---------------------------------------------------------------- embedding

TEST(CpuEmbedding, ForwardGathersAndBackwardAddsRepeatedIds) {
  CpuBackend be;
  const int V = 11, C = 70, N = 9;  // C spans two channel blocks
  const std::vector<int32_t> ids = {3, 0, 3, 10, 7, 3, 0, 5, 10};
  const Floats table = random_floats(V * C, 4);
  Floats out(N * C);
  be.embedding_forward(out.data(), ids.data(), table.data(), N, C);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) ASSERT_EQ(out[n * C + c], table[ids[n] * C + c]);

  const Floats dout = random_floats(N * C, 5);
  const Floats base = random_floats(V * C, 6);
  Floats dtable = base;
  be.embedding_backward(dtable.data(), dout.data(), ids.data(), N, C);
  Vec want = to_double(base);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) want[ids[n] * C + c] += dout[n * C + c];
  expect_close(dtable, want, 1e-6, 1e-6, "dtable");

  const std::vector<int32_t> bad = {1, -2};
  EXPECT_THROW(be.embedding_forward(out.data(), bad.data(), table.data(), 2, C), std::invalid_argument);
}

// ---------------------------------------------------------------- rmsnorm

TEST(CpuRmsNorm, ForwardMatchesReference) {
  CpuBackend be;
  const int N = 6, C = 100;
  const Floats x = random_floats(N * C, 7), w = random_floats(C, 8);
  Floats out(N * C), rstd(N);
  be.rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
  Vec want_rstd;
  const Vec want = ref::rmsnorm(to_double(x), to_double(w), N, C, 1e-5, &want_rstd);
  expect_close(out, want, 1e-5, 1e-6, "out");
  expect_close(rstd, want_rstd, 1e-6, 0, "rstd");
}

TEST(CpuRmsNorm, BackwardMatchesFiniteDifferencesAndAdds) {
  CpuBackend be;
  const int N = 5, C = 70;
  const float eps = 1e-5f;
  const Floats x = random_floats(N * C, 9), w = random_floats(C, 10), R = random_floats(N * C, 11);
  Floats out(N * C), rstd(N);
  be.rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  const Floats dx_base = random_floats(N * C, 12), dw_base = random_floats(C, 13);
  Floats dx = dx_base, dw = dw_base;
  be.rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);

  Vec xd = to_double(x), wd = to_double(w);
  const Vec Rd = to_double(R);
  auto loss = [&] { return dot(ref::rmsnorm(xd, wd, N, C, eps), Rd); };
  const Vec gx = finite_diff(xd, loss), gw = finite_diff(wd, loss);
  expect_close(dx, Vec(to_double(plus(dx_base, gx))), 1e-4, 1e-4 * max_abs(gx), "dx");
  expect_close(dw, Vec(to_double(plus(dw_base, gw))), 1e-4, 1e-4 * max_abs(gw), "dw");
}

// ---------------------------------------------------------------- rope

TEST(CpuRope, ForwardMatchesReference) {
  CpuBackend be;
  const int B = 2, T = 9, H = 3, D = 16, pos0 = 5;
  const float theta = 10000.f;
  Floats x = random_floats(B * T * H * D, 14);
  const Vec want = ref::rope(to_double(x), B, T, H, D, pos0, theta);
  be.rope_forward(x.data(), B, T, H, D, pos0, RopeSpec{theta});
  expect_close(x, want, 1e-5, 1e-5, "rope");
}

TEST(CpuRope, BackwardIsInverseRotationAndMatchesFiniteDifferences) {
  CpuBackend be;
  const int B = 2, T = 6, H = 2, D = 8, pos0 = 3;
  const float theta = 500.f;
  const Floats x0 = random_floats(B * T * H * D, 15);
  Floats x = x0;
  be.rope_forward(x.data(), B, T, H, D, pos0, RopeSpec{theta});
  be.rope_backward(x.data(), B, T, H, D, pos0, RopeSpec{theta});
  expect_close(x, to_double(x0), 1e-5, 1e-5, "forward then backward");

  // dL/dx for L = sum(rope(x) * R) is rope_backward(R).
  const Floats R = random_floats(x0.size(), 16);
  Floats grad = R;
  be.rope_backward(grad.data(), B, T, H, D, pos0, RopeSpec{theta});
  Vec xd = to_double(x0);
  const Vec Rd = to_double(R);
  const Vec g = finite_diff(xd, [&] { return dot(ref::rope(xd, B, T, H, D, pos0, theta), Rd); });
  expect_close(grad, g, 1e-4, 1e-5, "rope grad");

  EXPECT_THROW(be.rope_forward(x.data(), 1, 1, 1, 7, 0, RopeSpec{theta}), std::invalid_argument);
}

// Llama 3.1 inverse frequencies straight from the published recipe, in the order it is written
// (Hugging Face transformers, _compute_llama3_parameters): scale every frequency whose
// wavelength exceeds the low-frequency wavelength, then replace the medium band with the
// interpolation between the scaled and the unscaled value.
std::vector<double> llama3_inv_freq(double theta, int D, double factor, double low, double high, double old_context) {
  std::vector<double> out;
  const double pi = 3.14159265358979323846;
  for (int j = 0; j < D; j += 2) {
    const double inv_freq = 1.0 / std::pow(theta, static_cast<double>(j) / D);
    const double wavelen = 2 * pi / inv_freq;
    const double low_freq_wavelen = old_context / low, high_freq_wavelen = old_context / high;
    double scaled = wavelen > low_freq_wavelen ? inv_freq / factor : inv_freq;
    const double smooth = (old_context / wavelen - low) / (high - low);
    const double smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    out.push_back(medium ? smoothed : scaled);
  }
  return out;
}

// rope with per-pair inverse frequencies, in double.
Vec rope_with_freqs(const Vec& x, int B, int T, int H, int D, int pos0, const std::vector<double>& inv_freq) {
  Vec y(x);
  const int half = D / 2;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < half; ++i) {
          const double angle = (pos0 + t) * inv_freq[i];
          const std::size_t base = ((static_cast<std::size_t>(b) * T + t) * H + h) * D;
          const double a = x[base + i], c = x[base + i + half];
          y[base + i] = a * std::cos(angle) - c * std::sin(angle);
          y[base + i + half] = a * std::sin(angle) + c * std::cos(angle);
        }
  return y;
}

RopeSpec llama3_spec(double theta, double factor, double low, double high, int old_context) {
  RopeSpec s;
  s.theta = theta;
  s.scaling = RopeScaling::Llama3;
  s.factor = factor;
  s.low_freq_factor = low;
  s.high_freq_factor = high;
  s.original_context = old_context;
  return s;
}

TEST(CpuRope, Llama3InverseFrequenciesFollowTheRecipe) {
  // Llama 3.1's own settings: theta 500000, head_dim 128, factor 8, low 1, high 4, 8192.
  const RopeSpec spec = llama3_spec(500000, 8, 1, 4, 8192);
  const std::vector<double> want = llama3_inv_freq(500000, 128, 8, 1, 4, 8192);
  int kept = 0, divided = 0, ramped = 0;
  for (int i = 0; i < 64; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / 128), got = rope_inv_freq(spec, i, 128);
    EXPECT_NEAR(got, want[i], 1e-12 * want[i]) << "pair " << i;
    kept += got == f;
    divided += std::abs(got - f / 8) <= 1e-15 * f;
    ramped += got < f && got > f / 8 * (1 + 1e-12);
  }
  // All three bands are present (the high band unchanged, the low one divided by 8).
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(ramped, 0);
  EXPECT_EQ(kept + divided + ramped, 64);
  // Without scaling: theta^(-2i/D) exactly as before.
  for (int i = 0; i < 8; ++i) EXPECT_EQ(rope_inv_freq(RopeSpec{10000.0}, i, 16), std::pow(10000.0, -2.0 * i / 16));
}

TEST(CpuRope, Llama3ForwardAndBackwardMatchReference) {
  CpuBackend be;
  const int B = 2, T = 9, H = 3, D = 16, pos0 = 5;
  // theta 100, D 16: wavelengths 6.3 .. 2100; with an original context of 64 (bands at 16 and
  // 64) some pairs are kept, some ramped and some divided.
  const RopeSpec spec = llama3_spec(100, 4, 1, 4, 64);
  const std::vector<double> inv_freq = llama3_inv_freq(100, D, 4, 1, 4, 64);
  Floats x = random_floats(B * T * H * D, 40);
  const Floats x0 = x;
  be.rope_forward(x.data(), B, T, H, D, pos0, spec);
  expect_close(x, rope_with_freqs(to_double(x0), B, T, H, D, pos0, inv_freq), 1e-5, 1e-5, "llama3 rope");
  // It differs from the unscaled rotation.
  Floats plain = x0;
  be.rope_forward(plain.data(), B, T, H, D, pos0, RopeSpec{100.0});
  double diff = 0;
  for (std::size_t i = 0; i < x.size(); ++i) diff = std::max(diff, double(std::abs(x[i] - plain[i])));
  EXPECT_GT(diff, 0.1);
  // Backward: the gradient of sum(rope(x) * R).
  const Floats R = random_floats(x0.size(), 41);
  Floats grad = R;
  be.rope_backward(grad.data(), B, T, H, D, pos0, spec);
  Vec xd = to_double(x0);
  const Vec Rd = to_double(R);
  const Vec g = finite_diff(xd, [&] { return dot(rope_with_freqs(xd, B, T, H, D, pos0, inv_freq), Rd); });
  expect_close(grad, g, 1e-4, 1e-5, "llama3 rope grad");
  // Unusable settings are refused.
  RopeSpec bad = spec;
  bad.high_freq_factor = bad.low_freq_factor;
  EXPECT_THROW(be.rope_forward(x.data(), B, T, H, D, pos0, bad), std::invalid_argument);
  EXPECT_THROW(be.rope_forward(x.data(), B, T, H, D, pos0, RopeSpec{0.0}), std::invalid_argument);
}

// ---------------------------------------------------------------- bias

TEST(CpuBias, ForwardAndBackwardMatchReference) {
  CpuBackend be;
  for (const auto [N, C] : {std::pair{5, 3}, std::pair{700, 96}}) {  // the second above the parallel threshold
    const Floats y0 = random_floats(static_cast<std::size_t>(N) * C, 42), b = random_floats(C, 43);
    Floats y = y0;
    be.bias_forward(y.data(), b.data(), N, C);
    Vec want(y0.size());
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) want[n * C + c] = double(y0[n * C + c]) + b[c];
    expect_close(y, want, 1e-6, 1e-6, "bias_forward");

    const Floats dy = random_floats(y0.size(), 44), db0 = random_floats(C, 45);
    Floats db = db0;
    be.bias_backward(db.data(), dy.data(), N, C);  // adds into db
    Vec sums(C);
    for (int c = 0; c < C; ++c) {
      sums[c] = db0[c];
      for (int n = 0; n < N; ++n) sums[c] += dy[n * C + c];
    }
    expect_close(db, sums, 1e-5, 1e-5 * std::sqrt(double(N)), "bias_backward");
  }
  float y = 0, b = 0;
  EXPECT_THROW(be.bias_forward(&y, &b, 1, 0), std::invalid_argument);
}

// ---------------------------------------------------------------- swiglu

TEST(CpuSwiglu, ForwardAndBackwardMatchReference) {
  CpuBackend be;
  const std::size_t n = 40000;  // above the parallel threshold
  const Floats gate = random_floats(n, 17, 3.f), up = random_floats(n, 18), R = random_floats(n, 19);
  Floats out(n);
  be.swiglu_forward(out.data(), gate.data(), up.data(), n);
  expect_close(out, ref::swiglu(to_double(gate), to_double(up)), 1e-5, 1e-6, "swiglu");

  const Floats dg_base = random_floats(n, 20), du_base = random_floats(n, 21);
  Floats dgate = dg_base, dup = du_base;
  be.swiglu_backward(dgate.data(), dup.data(), R.data(), gate.data(), up.data(), n);
  // The op is element-wise, so each element's FD is independent: probe a sample.
  const std::size_t m = 300;
  Vec g(gate.begin(), gate.begin() + m), u(up.begin(), up.begin() + m);
  const Vec Rd(R.begin(), R.begin() + m);
  auto loss = [&] { return dot(ref::swiglu(g, u), Rd); };
  const Vec gg = finite_diff(g, loss), gu = finite_diff(u, loss);
  expect_close(Floats(dgate.begin(), dgate.begin() + m), Vec(to_double(plus(Floats(dg_base.begin(), dg_base.begin() + m), gg))),
               1e-4, 1e-5, "dgate");
  expect_close(Floats(dup.begin(), dup.begin() + m), Vec(to_double(plus(Floats(du_base.begin(), du_base.begin() + m), gu))),
               1e-4, 1e-5, "dup");
}

// ---------------------------------------------------------------- cross-entropy

TEST(CpuCrossEntropy, LossMatchesReferenceIncludingLargeLogits) {
  CpuBackend be;
  const int N = 7, V = 1003;
  Floats logits = random_floats(N * V, 22, 3.f);
  for (int j = 0; j < V; ++j) logits[2 * V + j] += 1000.f;  // row 2 would overflow a naive exp
  logits[4 * V + 17] = 80.f;                                // one dominant logit
  const std::vector<int32_t> targets = {0, 5, 1002, 17, 17, 300, 42};
  Floats losses(N);
  be.cross_entropy(logits.data(), targets.data(), losses.data(), nullptr, N, V, 1.f);
  expect_close(losses, ref::cross_entropy(to_double(logits), targets, N, V), 1e-5, 1e-5, "losses");
}

TEST(CpuCrossEntropy, GradientMatchesFiniteDifferences) {
  CpuBackend be;
  const int N = 4, V = 37;
  const float grad_scale = 0.25f;
  const Floats logits = random_floats(N * V, 23, 2.f);
  const std::vector<int32_t> targets = {3, 36, 0, 12};
  Floats losses(N), dlogits(N * V, 123.f);  // dlogits is overwritten, not accumulated
  be.cross_entropy(logits.data(), targets.data(), losses.data(), dlogits.data(), N, V, grad_scale);
  Vec x = to_double(logits);
  auto loss = [&] {
    double s = 0;
    for (double l : ref::cross_entropy(x, targets, N, V)) s += l;
    return grad_scale * s;
  };
  expect_close(dlogits, finite_diff(x, loss), 1e-4, 1e-6, "dlogits");
}

TEST(CpuCrossEntropy, IgnoredTargetsAliasingAndBadTargets) {
  CpuBackend be;
  const int N = 3, V = 50;
  const Floats logits = random_floats(N * V, 24);
  const std::vector<int32_t> targets = {7, -1, 49};
  Floats losses(N), dlogits(N * V);
  be.cross_entropy(logits.data(), targets.data(), losses.data(), dlogits.data(), N, V, 0.5f);
  EXPECT_EQ(losses[1], 0.f);
  for (int j = 0; j < V; ++j) EXPECT_EQ(dlogits[V + j], 0.f);
  EXPECT_GT(losses[0], 0.f);

  // In place: dlogits == logits gives identical losses and gradients.
  Floats inplace = logits, losses2(N);
  be.cross_entropy(inplace.data(), targets.data(), losses2.data(), inplace.data(), N, V, 0.5f);
  EXPECT_EQ(losses2, losses);
  EXPECT_EQ(inplace, dlogits);

  // A target >= V is refused, naming the first one (the CUDA backend reports the same text).
  const std::vector<int32_t> bad = {7, 50, 51};
  try {
    be.cross_entropy(logits.data(), bad.data(), losses.data(), nullptr, N, V, 1.f);
    ADD_FAILURE() << "expected an error for target 50";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "cross_entropy: target 50 at row 1 is out of range for vocabulary size 50");
    EXPECT_EQ(e.what(), cross_entropy_target_error(1, 50, 50));
  }
}

// ---------------------------------------------------------------- adamw

TEST(CpuAdamW, MatchesScalarReferenceOverThreeSteps) {
  CpuBackend be;
  const std::size_t n = 1000;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
  Floats param = random_floats(n, 25), m(n, 0.f), v(n, 0.f);
  Vec p_ref = to_double(param), m_ref(n, 0.0), v_ref(n, 0.0);
  for (int step = 1; step <= 3; ++step) {
    const Floats grad = random_floats(n, 100 + step);
    be.adamw_step(param.data(), grad.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, step, gs);
    for (std::size_t i = 0; i < n; ++i) {
      const double g = static_cast<double>(grad[i]) * gs;
      m_ref[i] = b1 * m_ref[i] + (1.0 - b1) * g;
      v_ref[i] = b2 * v_ref[i] + (1.0 - b2) * g * g;
      const double mhat = m_ref[i] / (1.0 - std::pow(static_cast<double>(b1), step));
      const double vhat = v_ref[i] / (1.0 - std::pow(static_cast<double>(b2), step));
      p_ref[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p_ref[i]);
    }
  }
  expect_close(param, p_ref, 1e-5, 1e-6, "param");
  expect_close(m, m_ref, 1e-5, 1e-7, "m");
  expect_close(v, v_ref, 1e-5, 1e-8, "v");
  EXPECT_THROW(be.adamw_step(param.data(), param.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, 0, gs),
               std::invalid_argument);
}

// ---------------------------------------------------------------- attention

// One attention call's inputs: K/V layer buffers shared by all calls of a test.
struct AttnLayers {
  std::vector<Floats> k, v;
};

AttnLayers make_layers(const ref::AttnShape& s, int n_layers, uint32_t seed, bool poison_padding = true) {
  AttnLayers L;
  const std::size_t per_layer = static_cast<std::size_t>(s.B) * s.seq_stride();
  for (int l = 0; l < n_layers; ++l) {
    L.k.push_back(random_floats(per_layer, seed + 2 * l));
    L.v.push_back(random_floats(per_layer, seed + 2 * l + 1));
    if (poison_padding && s.kv_seq_stride) {  // cache slots past Tk must never be read: poison them
      for (int b = 0; b < s.B; ++b)
        for (long e = static_cast<long>(s.Tk) * s.Hkv * s.D; e < s.seq_stride(); ++e) {
          L.k[l][b * s.seq_stride() + e] = std::numeric_limits<float>::quiet_NaN();
          L.v[l][b * s.seq_stride() + e] = std::numeric_limits<float>::quiet_NaN();
        }
    }
  }
  return L;
}

AttentionShape to_shape(const ref::AttnShape& s) {
  AttentionShape a;
  a.B = s.B;
  a.Tq = s.Tq;
  a.Tk = s.Tk;
  a.n_heads = s.H;
  a.n_kv_heads = s.Hkv;
  a.head_dim = s.D;
  a.q_pos0 = s.q_pos0;
  a.scale = static_cast<float>(s.scale);
  a.kv_seq_stride = s.kv_seq_stride;
  return a;
}

std::vector<const float*> pointers(const std::vector<Floats>& layers) {
  std::vector<const float*> p;
  for (const Floats& l : layers) p.push_back(l.data());
  return p;
}

void cpu_attention_forward(Backend& be, const ref::AttnShape& s, const Floats& q, const AttnLayers& L,
                           const std::vector<int32_t>& src, Floats& out, Floats& lse) {
  out.assign(static_cast<std::size_t>(s.B) * s.Tq * s.H * s.D, 0.f);
  lse.assign(static_cast<std::size_t>(s.B) * s.H * s.Tq, 0.f);
  const auto kp = pointers(L.k), vp = pointers(L.v);
  AttentionForward p;
  p.shape = to_shape(s);
  p.q = q.data();
  p.k_layers = kp.data();
  p.v_layers = vp.data();
  p.src = src.data();
  p.out = out.data();
  p.lse = lse.data();
  be.attention_forward(p);
}

void ref_attention(const ref::AttnShape& s, const Floats& q, const AttnLayers& L, const std::vector<int32_t>& src,
                   Vec& out, Vec& lse) {
  std::vector<Vec> k, v;
  for (const Floats& l : L.k) k.push_back(to_double(l));
  for (const Floats& l : L.v) v.push_back(to_double(l));
  ref::attention(s, to_double(q), k, v, src, out, lse);
}

ref::AttnShape attn_shape(int B, int Tq, int Tk, int H, int Hkv, int D, int q_pos0 = 0, long kv_seq_stride = 0) {
  return ref::AttnShape{B, Tq, Tk, H, Hkv, D, q_pos0, 1.0 / std::sqrt(static_cast<double>(D)), kv_seq_stride};
}

void check_forward(const ref::AttnShape& s, int n_layers, const std::vector<int32_t>& src, uint32_t seed) {
  CpuBackend be;
  const AttnLayers L = make_layers(s, n_layers, seed);
  const Floats q = random_floats(static_cast<std::size_t>(s.B) * s.Tq * s.H * s.D, seed + 1000);
  Floats out, lse;
  cpu_attention_forward(be, s, q, L, src, out, lse);
  Vec want_out, want_lse;
  ref_attention(s, q, L, src, want_out, want_lse);
  expect_close(out, want_out, 1e-4, 1e-5, "attention out");
  expect_close(lse, want_lse, 1e-5, 1e-5, "attention lse");

  // lse is optional.
  Floats out2(out.size());
  const auto kp = pointers(L.k), vp = pointers(L.v);
  AttentionForward p;
  p.shape = to_shape(s);
  p.q = q.data();
  p.k_layers = kp.data();
  p.v_layers = vp.data();
  p.src = src.data();
  p.out = out2.data();
  be.attention_forward(p);
  EXPECT_EQ(out2, out);
}

TEST(CpuAttentionForward, PlainMultiHead) { check_forward(attn_shape(2, 13, 13, 3, 3, 8), 1, {0, 0}, 1); }

TEST(CpuAttentionForward, GroupedQuery) {
  check_forward(attn_shape(2, 11, 11, 4, 2, 8), 1, {0, 0}, 2);
  check_forward(attn_shape(2, 11, 11, 4, 1, 8), 1, {0, 0}, 3);
}

TEST(CpuAttentionForward, RoutedAcrossLayers) {
  // Sequences 0 and 3 share layer 1; sequence 2 reads the lowest layer.
  check_forward(attn_shape(5, 9, 9, 4, 2, 8), 4, {1, 3, 0, 1, 2}, 4);
  std::mt19937 gen(5);
  std::vector<int32_t> src(6);
  for (int32_t& s : src) s = static_cast<int32_t>(gen() % 3);
  check_forward(attn_shape(6, 7, 7, 2, 2, 4), 3, src, 6);
}

TEST(CpuAttentionForward, MultipleTilesLongSequence) {
  // Tq = Tk = 150 spans several query blocks (32) and key tiles (64), with ragged ends.
  check_forward(attn_shape(2, 150, 150, 2, 1, 16), 2, {1, 0}, 7);
}

TEST(CpuAttentionForward, DecodeSingleQuery) {
  check_forward(attn_shape(3, 1, 70, 4, 2, 8, /*q_pos0=*/69), 2, {0, 1, 1}, 8);
}

TEST(CpuAttentionForward, PrefillChunkShorterThanKeys) {
  check_forward(attn_shape(2, 10, 80, 2, 1, 8, /*q_pos0=*/70), 1, {0, 0}, 9);
}

TEST(CpuAttentionForward, KvCacheWithLargerSequenceStride) {
  // Cache with room for 96 tokens, 40 filled; the unfilled slots hold NaN.
  const int Tmax = 96, Tk = 40, Hkv = 2, D = 8;
  check_forward(attn_shape(3, 1, Tk, 4, Hkv, D, Tk - 1, static_cast<long>(Tmax) * Hkv * D), 2, {1, 0, 1}, 10);
  check_forward(attn_shape(2, 5, Tk, 4, Hkv, D, Tk - 5, static_cast<long>(Tmax) * Hkv * D), 1, {0, 0}, 11);
}

TEST(CpuAttentionForward, LseIsLogSumExpOfScaledScores) {
  // One query, one key: lse = scale * q.k exactly, out = v.
  CpuBackend be;
  const ref::AttnShape s = attn_shape(1, 1, 1, 1, 1, 4);
  const Floats q = {1, 2, 3, 4};
  AttnLayers L{{{0.5f, -1, 2, 0}}, {{7, 8, 9, 10}}};
  Floats out, lse;
  cpu_attention_forward(be, s, q, L, {0}, out, lse);
  EXPECT_FLOAT_EQ(lse[0], (0.5f - 2 + 6) * 0.5f);
  EXPECT_EQ(out, L.v[0]);
}

TEST(CpuAttentionForward, RejectsBadShapes) {
  CpuBackend be;
  const Floats q(64), kv(64);
  Floats out(64);
  const float* kp[] = {kv.data()};
  const int32_t src[] = {0};
  AttentionForward p;
  p.shape = to_shape(attn_shape(1, 2, 2, 3, 2, 4));  // 2 does not divide 3
  p.q = q.data();
  p.k_layers = kp;
  p.v_layers = kp;
  p.src = src;
  p.out = out.data();
  EXPECT_THROW(be.attention_forward(p), std::invalid_argument);
  p.shape = to_shape(attn_shape(1, 2, 2, 2, 2, 4));
  p.shape.scale = 0.f;
  EXPECT_THROW(be.attention_forward(p), std::invalid_argument);
  p.shape = to_shape(attn_shape(1, 2, 2, 2, 2, 4, 0, /*kv_seq_stride=*/3));
  EXPECT_THROW(be.attention_forward(p), std::invalid_argument);
  const int32_t bad_src[] = {-1};
  p.shape = to_shape(attn_shape(1, 2, 2, 2, 2, 4));
  p.src = bad_src;
  EXPECT_THROW(be.attention_forward(p), std::invalid_argument);
  // The kernels index within a sequence in int: 300000 steps x 64 heads x 128 is refused up front
  // (the front, kvroute/attention_dims.h, checks before it reads any pointer).
  p.src = src;
  p.shape = to_shape(attn_shape(1, 300000, 300000, 64, 8, 128));
  try {
    be.attention_forward(p);
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "attention_forward: one sequence of q or K/V holds more than 2^31 - 1 elements");
  }
}

// Backward of several attention calls (e.g. several layers) that share the K/V
// layer buffers, checked against central differences of the summed reference
// loss  sum_c sum(out_c * R_c)  with respect to every q and every K/V element.
struct AttnCall {
  std::vector<int32_t> src;
  Floats q, R;
};

void check_backward(const ref::AttnShape& s, int n_layers, const std::vector<std::vector<int32_t>>& srcs,
                    uint32_t seed) {
  CpuBackend be;
  const AttnLayers L = make_layers(s, n_layers, seed);
  const std::size_t q_size = static_cast<std::size_t>(s.B) * s.Tq * s.H * s.D;
  std::vector<AttnCall> calls;
  for (std::size_t c = 0; c < srcs.size(); ++c)
    calls.push_back({srcs[c], random_floats(q_size, seed + 100 + c), random_floats(q_size, seed + 200 + c)});

  // Analytic: dK/dV start from random values to check that backward adds.
  AttnLayers dL = make_layers(s, n_layers, seed + 300, /*poison_padding=*/false);
  const AttnLayers d_base = dL;
  std::vector<float*> dkp, dvp;
  for (int l = 0; l < n_layers; ++l) {
    dkp.push_back(dL.k[l].data());
    dvp.push_back(dL.v[l].data());
  }
  const auto kp = pointers(L.k), vp = pointers(L.v);
  std::vector<Floats> dq(calls.size(), Floats(q_size, 0.f));
  for (std::size_t c = 0; c < calls.size(); ++c) {
    Floats out, lse;
    cpu_attention_forward(be, s, calls[c].q, L, calls[c].src, out, lse);
    AttentionBackward p;
    p.shape = to_shape(s);
    p.q = calls[c].q.data();
    p.k_layers = kp.data();
    p.v_layers = vp.data();
    p.src = calls[c].src.data();
    p.out = out.data();
    p.lse = lse.data();
    p.dout = calls[c].R.data();
    p.dq = dq[c].data();
    p.dk_layers = dkp.data();
    p.dv_layers = dvp.data();
    be.attention_backward(p);
  }

  // Numeric, in double on the reference.
  std::vector<Vec> qd, Rd, kd, vd;
  for (const AttnCall& c : calls) {
    qd.push_back(to_double(c.q));
    Rd.push_back(to_double(c.R));
  }
  for (int l = 0; l < n_layers; ++l) {
    kd.push_back(to_double(L.k[l]));
    vd.push_back(to_double(L.v[l]));
  }
  auto loss = [&] {
    double total = 0;
    Vec out, lse;
    for (std::size_t c = 0; c < calls.size(); ++c) {
      ref::attention(s, qd[c], kd, vd, calls[c].src, out, lse);
      total += dot(out, Rd[c]);
    }
    return total;
  };
  const double rtol = 2e-3, atol = 2e-4;
  for (std::size_t c = 0; c < calls.size(); ++c)
    expect_close(dq[c], finite_diff(qd[c], loss), rtol, atol, "dq call " + std::to_string(c));
  for (int l = 0; l < n_layers; ++l) {
    // NaN padding of a KV cache is never read, so its difference quotient is 0 (not NaN).
    const Vec gk = finite_diff(kd[l], loss), gv = finite_diff(vd[l], loss);
    Vec want_k = to_double(d_base.k[l]), want_v = to_double(d_base.v[l]);
    for (std::size_t i = 0; i < want_k.size(); ++i) {
      if (std::isnan(gk[i]) || std::isnan(gv[i])) ADD_FAILURE() << "NaN difference quotient at " << i;
      want_k[i] += gk[i];
      want_v[i] += gv[i];
    }
    expect_close(dL.k[l], want_k, rtol, atol, "dk layer " + std::to_string(l));
    expect_close(dL.v[l], want_v, rtol, atol, "dv layer " + std::to_string(l));
  }
}

TEST(CpuAttentionBackward, PlainMultiHead) { check_backward(attn_shape(2, 6, 6, 2, 2, 4), 1, {{0, 0}}, 20); }

TEST(CpuAttentionBackward, GroupedQuery) {
  check_backward(attn_shape(2, 6, 6, 4, 2, 4), 1, {{0, 0}}, 21);
  check_backward(attn_shape(1, 6, 6, 4, 1, 4), 1, {{0}}, 22);
}

TEST(CpuAttentionBackward, RoutedGradientsLandInSourceLayersOnly) {
  // Layer 2 is never a source: its dK/dV must stay at their starting values.
  // Sequences 1 and 3 share source layer 0.
  check_backward(attn_shape(4, 5, 5, 4, 2, 4), 4, {{1, 0, 3, 0}}, 23);
}

TEST(CpuAttentionBackward, TwoLayersAccumulateIntoSharedSource) {
  // Two calls (two layers' attention) whose sequences hit the same source layers.
  check_backward(attn_shape(3, 5, 5, 2, 1, 4), 3, {{0, 1, 0}, {0, 0, 2}}, 24);
}

TEST(CpuAttentionBackward, MultipleTiles) { check_backward(attn_shape(1, 70, 70, 2, 1, 4), 1, {{0}}, 25); }

// head_dim a multiple of the tile width: q and dout rows feed the tile GEMMs straight from memory.
TEST(CpuAttentionBackward, HeadDimReadInPlace) { check_backward(attn_shape(1, 45, 45, 2, 1, 16), 1, {{0}}, 27); }

TEST(CpuAttentionBackward, ChunkWithPaddedCache) {
  const int Tmax = 80, Tk = 68, Hkv = 1, D = 4;
  check_backward(attn_shape(2, 6, Tk, 2, Hkv, D, Tk - 6, static_cast<long>(Tmax) * Hkv * D), 2, {{1, 1}}, 26);
}

TEST(CpuAttentionBackward, DeterministicAcrossRunsAndThreadCounts) {
  CpuBackend be;
  const ref::AttnShape s = attn_shape(3, 100, 100, 4, 2, 16);
  const int n_layers = 2;
  const std::vector<int32_t> src = {1, 0, 1};
  const AttnLayers L = make_layers(s, n_layers, 30);
  const std::size_t q_size = static_cast<std::size_t>(s.B) * s.Tq * s.H * s.D;
  const Floats q = random_floats(q_size, 31), dout = random_floats(q_size, 32);
  const auto kp = pointers(L.k), vp = pointers(L.v);

  auto run = [&](int threads, Floats& out, Floats& dq, AttnLayers& dL) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    Floats lse;
    cpu_attention_forward(be, s, q, L, src, out, lse);
    dq.assign(q_size, 0.f);
    dL = make_layers(s, n_layers, 0);
    std::vector<float*> dkp, dvp;
    for (int l = 0; l < n_layers; ++l) {
      std::fill(dL.k[l].begin(), dL.k[l].end(), 0.f);
      std::fill(dL.v[l].begin(), dL.v[l].end(), 0.f);
      dkp.push_back(dL.k[l].data());
      dvp.push_back(dL.v[l].data());
    }
    AttentionBackward p;
    p.shape = to_shape(s);
    p.q = q.data();
    p.k_layers = kp.data();
    p.v_layers = vp.data();
    p.src = src.data();
    p.out = out.data();
    p.lse = lse.data();
    p.dout = dout.data();
    p.dq = dq.data();
    p.dk_layers = dkp.data();
    p.dv_layers = dvp.data();
    be.attention_backward(p);
    omp_set_num_threads(saved);
  };
  Floats out1, dq1, out2, dq2, out3, dq3;
  AttnLayers d1, d2, d3;
  const int many = std::max(2, omp_get_max_threads());
  run(many, out1, dq1, d1);
  run(many, out2, dq2, d2);
  run(1, out3, dq3, d3);
  for (const auto* other : {&out2, &out3}) EXPECT_EQ(std::memcmp(out1.data(), other->data(), out1.size() * 4), 0);
  for (const auto* other : {&dq2, &dq3}) EXPECT_EQ(std::memcmp(dq1.data(), other->data(), dq1.size() * 4), 0);
  for (const AttnLayers* other : {&d2, &d3})
    for (int l = 0; l < n_layers; ++l) {
      EXPECT_EQ(std::memcmp(d1.k[l].data(), other->k[l].data(), d1.k[l].size() * 4), 0) << "dk layer " << l;
      EXPECT_EQ(std::memcmp(d1.v[l].data(), other->v[l].data(), d1.v[l].size() * 4), 0) << "dv layer " << l;
    }
  double norm = 0;
  for (float x : dq1) norm += x * x;
  EXPECT_GT(norm, 0);
}

}  // namespace
}  // namespace kvroute
