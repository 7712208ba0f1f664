// CUDA backend vs CPU backend: every op runs on the same random inputs on both
// backends and the results are compared element-wise. Compiled by the host
// compiler, so it talks to the GPU only through the Backend interface.
//
// Without a CUDA device every test skips with "no CUDA device: GPU test
// skipped"; in a build without CUDA the file holds a single skipped test.
//
// fp32 tolerance table. An element passes when |gpu - cpu| <= atol + rtol * |cpu|.
//   op                                   atol    rtol   why they may differ at all
//   accumulate / add / scale / embedding 0       1e-6   same IEEE ops, same order (expect exact)
//   sum_squares                          0       1e-9   double sums in a different order
//   matmul (K <= 256)                    1e-4    1e-4   cuBLAS vs oneDNN summation order
//   rmsnorm, rope, swiglu, adamw         1e-5    1e-5   float reductions in another order, exp, FMA contraction
//   cross_entropy losses                 1e-5    1e-5   online vs two-pass softmax sums
//   cross_entropy dlogits                1e-8    1e-4   tiny values (grad_scale * p)
//   attention out / lse / dq / dk / dv   1e-4    1e-4   online softmax, tiled sums in another order
//   (the same with deterministic=false: dq summed by atomics in another order)
// Determinism tests require bitwise equality of two GPU runs.
//
// bf16 precision (train.precision: bf16; matmul and attention forward change):
//   matmul vs CPU on bf16-rounded operands  1e-4  1e-4   only the fp32 accumulation order differs
//   matmul with B = identity                exact        C is exactly the bf16 rounding of A
//   attention (rounded Q/K/V) out           3e-3  1e-2   P rounded to bf16 before P V
//   attention lse                           1e-4  1e-4   exact bf16 products, fp32 sums
//   attention dq / dK / dV                  2e-2  2e-2   bf16 dout, P, dS; the forward's out
//   attention vs the CPU's bf16 twin        5e-5  5e-4   summation order, exp (99% of elements; the rest
//     (out, dq, dK, dV; lse 1e-5 1e-5)                     within the lines above: rare bf16 rounding flips)
//   (the lines above pin the WMMA kernels: BackendOptions::cudnn_attention = false)
//   cuDNN attention vs the CPU bf16 twin (cuda/cudnn_attention_plan.h; bf16, head_dim 64/128, training shapes)
//     out                                  3e-3  1e-2   cuDNN writes out in bf16, rounds P where its kernel does
//     lse                                  1e-4  1e-4   exact bf16 products, fp32 sums in another order
//     dq / dK / dV                         2e-2  2e-2   written in bf16 by cuDNN, then added in fp32
//   whole model step, loss                  0     2e-2   bf16 operands in every projection
//   whole model step, gradients             5e-2 * max|grad| + 5e-2 rel  (errors compound through
//                                           12 GEMMs per layer; checked per tensor, see below)
#include <gtest/gtest.h>

#include "kvroute/backend.h"

#ifdef KVROUTE_WITH_CUDA

#include "../cuda/cudnn_attention.h"
#include "comm/comm_impl.h"
#include "kvroute/bf16.h"
#include "kvroute/config.h"
#include "kvroute/model.h"
#include "kvroute/optimizer.h"
#include "kvroute/routing.h"
#include "model_step.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace kvroute {
namespace {

struct Tol {
  double atol;
  double rtol;
};
constexpr Tol kExactTol{0.0, 1e-6};
constexpr Tol kSumSquaresTol{0.0, 1e-9};
constexpr Tol kMatmulTol{1e-4, 1e-4};
constexpr Tol kMathTol{1e-5, 1e-5};
constexpr Tol kLossTol{1e-5, 1e-5};
constexpr Tol kDlogitsTol{1e-8, 1e-4};
constexpr Tol kAttentionTol{1e-4, 1e-4};
// bf16 attention (tensor cores) against the CPU on the same bf16-rounded Q/K/V: scores are
// exact bf16 products summed in fp32 (lse: fp32 tolerance); P is rounded to bf16 before P V
// (out: 2^-9 relative per weight); backward also rounds dout, P and dS to bf16 (2^-9 each)
// and starts from the forward's out (delta = dout . out).
constexpr Tol kAttentionBf16OutTol{3e-3, 1e-2};
constexpr Tol kAttentionBf16LseTol{1e-4, 1e-4};
constexpr Tol kAttentionBf16GradTol{2e-2, 2e-2};
// bf16 attention against its CPU twin (src/cpu/attention_bf16_cpu.h: the same rounding points, on
// the same unrounded inputs): the two differ in fp32 summation order and expf against the CPU's
// polynomial exp (a few ulp), so all but rare elements agree to fp32 noise. Rare: a P or dS
// within a few ulp of a bf16 rounding boundary may round the other way on one side (about 1e-4
// of them), moving the elements that sum it by up to 2^-8 of that term; those stay within the
// bf16-vs-fp32 tolerances above. The backward gets the CPU forward's out and lse on both sides,
// so a forward rounding flip does not propagate into the gradients.
constexpr Tol kAttentionTwinTol{5e-5, 5e-4};
constexpr Tol kAttentionTwinLseTol{1e-5, 1e-5};
constexpr double kAttentionTwinMaxOutliers = 0.01;  // fraction of elements allowed outside kAttentionTwinTol
// cuDNN attention against the CPU bf16 twin: cuDNN writes out, dq, dK and dV in bf16 (2^-9
// relative each) and rounds P and dS where its kernels do, so the bf16-vs-fp32 tolerances hold
// for every element.
constexpr Tol kAttentionCudnnOutTol{3e-3, 1e-2};
constexpr Tol kAttentionCudnnLseTol{1e-4, 1e-4};
constexpr Tol kAttentionCudnnGradTol{2e-2, 2e-2};

// The tensor-core (WMMA) kernels in bf16, with cuDNN attention off.
BackendOptions bf16_wmma() {
  BackendOptions o{"bf16", true};
  o.cudnn_attention = false;
  return o;
}

// Skips the test unless cuDNN attention can run here; says why not.
#define KVR_REQUIRE_CUDNN()                                                                          \
  do {                                                                                               \
    std::string kvr_why_;                                                                            \
    if (!CudnnAttention::create(nullptr, &kvr_why_)) GTEST_SKIP() << "no cuDNN attention: " << kvr_why_; \
  } while (0)

#define KVR_REQUIRE_CUDA()                                                       \
  do {                                                                           \
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device: GPU test skipped";   \
  } while (0)

// Both backends of one test; the GPU one with the given options.
struct Backends {
  explicit Backends(const BackendOptions& gpu_options = {})
      : gpu(make_backend("cuda", gpu_options)), cpu(make_backend("cpu")) {}
  Backends(const BackendOptions& gpu_options, const BackendOptions& cpu_options)
      : gpu(make_backend("cuda", gpu_options)), cpu(make_backend("cpu", cpu_options)) {}
  std::unique_ptr<Backend> gpu;
  std::unique_ptr<Backend> cpu;
};

// One host array mirrored on both backends.
template <typename T>
struct Mirror {
  DeviceBuffer<T> gpu;
  DeviceBuffer<T> cpu;
  Mirror(Backends& be, const std::vector<T>& host)
      : gpu(be.gpu.get(), host.size()), cpu(be.cpu.get(), host.size()) {
    gpu.upload(host);
    cpu.upload(host);
  }
};

std::vector<float> random_floats(std::size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<int32_t> random_ints(std::size_t n, std::mt19937& rng, int lo, int hi) {
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu, Tol tol, const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  std::size_t bad = 0, worst_i = 0;
  double worst = -1.0;
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    const double g = gpu[i], c = cpu[i];
    const double diff = std::fabs(g - c);
    const double limit = tol.atol + tol.rtol * std::fabs(c);
    const bool both_nan = std::isnan(g) && std::isnan(c);
    if (!both_nan && !(diff <= limit)) {
      ++bad;
      const double excess = std::isnan(diff) ? std::numeric_limits<double>::infinity() : diff - limit;
      if (excess > worst) {
        worst = excess;
        worst_i = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << gpu.size() << " elements outside atol " << tol.atol
                     << " + rtol " << tol.rtol << "; worst at [" << worst_i << "] gpu " << gpu[worst_i] << " cpu "
                     << cpu[worst_i];
}

void expect_close(const Mirror<float>& m, Tol tol, const std::string& what) {
  expect_close(m.gpu.download(), m.cpu.download(), tol, what);
}

// Every element within `loose`, and all but a fraction `max_outliers` of them within `tight`.
void expect_mostly_close(const Mirror<float>& m, Tol tight, Tol loose, double max_outliers, const std::string& what) {
  const std::vector<float> gpu = m.gpu.download(), cpu = m.cpu.download();
  expect_close(gpu, cpu, loose, what);
  std::size_t outliers = 0;
  for (std::size_t i = 0; i < gpu.size(); ++i) {
    const bool both_nan = std::isnan(gpu[i]) && std::isnan(cpu[i]);
    if (!both_nan && !(std::fabs(double(gpu[i]) - cpu[i]) <= tight.atol + tight.rtol * std::fabs(double(cpu[i]))))
      ++outliers;
  }
  EXPECT_LE(outliers, max_outliers * gpu.size()) << what << ": " << outliers << " of " << gpu.size()
                                                 << " elements outside atol " << tight.atol << " + rtol " << tight.rtol;
}

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// ---------------------------------------------------------------- memory

TEST(CudaOps, MemoryRoundTrip) {
  KVR_REQUIRE_CUDA();
  auto gpu = make_backend("cuda");
  EXPECT_EQ(gpu->device(), Device::CUDA);
  EXPECT_EQ(gpu->name(), "cuda");
  std::mt19937 rng(1);
  const std::size_t n = 100003;
  DeviceBuffer<float> a(gpu.get(), n), b(gpu.get(), n);
  for (float x : a.download()) ASSERT_EQ(x, 0.f) << "allocations must be zero-filled";
  const auto host = random_floats(n, rng);
  a.upload(host);
  EXPECT_TRUE(bitwise_equal(a.download(), host));
  gpu->copy(b.get(), a.get(), n * sizeof(float));
  EXPECT_TRUE(bitwise_equal(b.download(), host));
  gpu->fill_zero(b.get(), n * sizeof(float));
  for (float x : b.download()) ASSERT_EQ(x, 0.f);
  gpu->synchronize();
}

// ---------------------------------------------------------------- dense algebra

TEST(CudaOps, MatmulAllTransposes) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(2);
  const int sizes[][3] = {{37, 53, 29}, {64, 128, 256}, {1, 300, 17}, {5, 1, 8}};
  for (const auto& s : sizes) {
    const int M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        for (float beta : {0.f, 0.3f}) {
          Mirror<float> A(be, random_floats(static_cast<std::size_t>(M) * K, rng));
          Mirror<float> B(be, random_floats(static_cast<std::size_t>(K) * N, rng));
          Mirror<float> C(be, random_floats(static_cast<std::size_t>(M) * N, rng));
          const float alpha = 0.7f;
          be.gpu->matmul(A.gpu.get(), B.gpu.get(), C.gpu.get(), M, N, K, ta, tb, alpha, beta);
          be.cpu->matmul(A.cpu.get(), B.cpu.get(), C.cpu.get(), M, N, K, ta, tb, alpha, beta);
          std::ostringstream what;
          what << "matmul M=" << M << " N=" << N << " K=" << K << " trans_a=" << ta << " trans_b=" << tb
               << " beta=" << beta;
          expect_close(C, kMatmulTol, what.str());
        }
      }
    }
  }
  // K == 0: C = beta * C.
  Mirror<float> C(be, random_floats(12, rng));
  be.gpu->matmul(nullptr, nullptr, C.gpu.get(), 3, 4, 0, false, false, 1.f, 0.5f);
  be.cpu->matmul(nullptr, nullptr, C.cpu.get(), 3, 4, 0, false, false, 1.f, 0.5f);
  expect_close(C, kMatmulTol, "matmul K=0");
}

TEST(CudaOps, ElementwiseAccumulateAddScale) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(3);
  const std::size_t n = 1000003;
  Mirror<float> x(be, random_floats(n, rng)), y(be, random_floats(n, rng)), z(be, random_floats(n, rng));
  be.gpu->accumulate(y.gpu.get(), x.gpu.get(), n);
  be.cpu->accumulate(y.cpu.get(), x.cpu.get(), n);
  expect_close(y, kExactTol, "accumulate");
  be.gpu->add(z.gpu.get(), x.gpu.get(), y.gpu.get(), n);
  be.cpu->add(z.cpu.get(), x.cpu.get(), y.cpu.get(), n);
  expect_close(z, kExactTol, "add");
  be.gpu->add(z.gpu.get(), z.gpu.get(), x.gpu.get(), n);  // in place
  be.cpu->add(z.cpu.get(), z.cpu.get(), x.cpu.get(), n);
  expect_close(z, kExactTol, "add in place");
  be.gpu->scale(z.gpu.get(), n, -0.37f);
  be.cpu->scale(z.cpu.get(), n, -0.37f);
  expect_close(z, kExactTol, "scale");
}

TEST(CudaOps, SumSquares) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(4);
  for (std::size_t n : {std::size_t{1}, std::size_t{255}, std::size_t{65537}, std::size_t{1000003}}) {
    Mirror<float> x(be, random_floats(n, rng, -3.f, 3.f));
    const double g = be.gpu->sum_squares(x.gpu.get(), n);
    const double c = be.cpu->sum_squares(x.cpu.get(), n);
    EXPECT_NEAR(g, c, kSumSquaresTol.atol + kSumSquaresTol.rtol * std::fabs(c)) << "sum_squares n=" << n;
  }
  EXPECT_EQ(be.gpu->sum_squares(nullptr, 0), 0.0);
}

TEST(CudaOps, SwiGLU) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(5);
  const std::size_t n = 100003;
  Mirror<float> gate(be, random_floats(n, rng, -8.f, 8.f)), up(be, random_floats(n, rng, -2.f, 2.f));
  Mirror<float> out(be, random_floats(n, rng)), dout(be, random_floats(n, rng));
  Mirror<float> dgate(be, random_floats(n, rng)), dup(be, random_floats(n, rng));  // backward adds into these
  be.gpu->swiglu_forward(out.gpu.get(), gate.gpu.get(), up.gpu.get(), n);
  be.cpu->swiglu_forward(out.cpu.get(), gate.cpu.get(), up.cpu.get(), n);
  expect_close(out, kMathTol, "swiglu_forward");
  be.gpu->swiglu_backward(dgate.gpu.get(), dup.gpu.get(), dout.gpu.get(), gate.gpu.get(), up.gpu.get(), n);
  be.cpu->swiglu_backward(dgate.cpu.get(), dup.cpu.get(), dout.cpu.get(), gate.cpu.get(), up.cpu.get(), n);
  expect_close(dgate, kMathTol, "swiglu_backward dgate");
  expect_close(dup, kMathTol, "swiglu_backward dup");
}

// ---------------------------------------------------------------- embedding, norm, rope

TEST(CudaOps, Embedding) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(6);
  const int vocab = 50;
  for (int C : {96, 2000}) {
    const int N = 300;  // many repeated ids
    Mirror<int32_t> ids(be, random_ints(N, rng, 0, vocab - 1));
    Mirror<float> table(be, random_floats(static_cast<std::size_t>(vocab) * C, rng));
    Mirror<float> out(be, random_floats(static_cast<std::size_t>(N) * C, rng));
    Mirror<float> dout(be, random_floats(static_cast<std::size_t>(N) * C, rng));
    Mirror<float> dtable(be, random_floats(static_cast<std::size_t>(vocab) * C, rng));
    be.gpu->embedding_forward(out.gpu.get(), ids.gpu.get(), table.gpu.get(), N, C);
    be.cpu->embedding_forward(out.cpu.get(), ids.cpu.get(), table.cpu.get(), N, C);
    expect_close(out, kExactTol, "embedding_forward C=" + std::to_string(C));
    be.gpu->embedding_backward(dtable.gpu.get(), dout.gpu.get(), ids.gpu.get(), N, C);
    be.cpu->embedding_backward(dtable.cpu.get(), dout.cpu.get(), ids.cpu.get(), N, C);
    expect_close(dtable, kExactTol, "embedding_backward C=" + std::to_string(C));
  }
}

TEST(CudaOps, RMSNorm) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(7);
  const int shapes[][2] = {{67, 200}, {1000, 64}, {3, 1}};
  for (const auto& s : shapes) {
    const int N = s[0], C = s[1];
    const std::size_t nc = static_cast<std::size_t>(N) * C;
    const std::string tag = " N=" + std::to_string(N) + " C=" + std::to_string(C);
    Mirror<float> x(be, random_floats(nc, rng, -2.f, 2.f)), w(be, random_floats(C, rng, 0.5f, 1.5f));
    Mirror<float> out(be, random_floats(nc, rng)), rstd(be, random_floats(N, rng));
    Mirror<float> dout(be, random_floats(nc, rng)), dx(be, random_floats(nc, rng)), dw(be, random_floats(C, rng));
    be.gpu->rmsnorm_forward(out.gpu.get(), rstd.gpu.get(), x.gpu.get(), w.gpu.get(), N, C, 1e-5f);
    be.cpu->rmsnorm_forward(out.cpu.get(), rstd.cpu.get(), x.cpu.get(), w.cpu.get(), N, C, 1e-5f);
    expect_close(out, kMathTol, "rmsnorm_forward out" + tag);
    expect_close(rstd, kMathTol, "rmsnorm_forward rstd" + tag);
    // Backward on the CPU's rstd for both, so only the backward is compared.
    be.gpu->copy_to_device(rstd.gpu.get(), rstd.cpu.download().data(), N * sizeof(float));
    be.gpu->rmsnorm_backward(dx.gpu.get(), dw.gpu.get(), dout.gpu.get(), x.gpu.get(), w.gpu.get(), rstd.gpu.get(),
                             N, C);
    be.cpu->rmsnorm_backward(dx.cpu.get(), dw.cpu.get(), dout.cpu.get(), x.cpu.get(), w.cpu.get(), rstd.cpu.get(),
                             N, C);
    expect_close(dx, kMathTol, "rmsnorm_backward dx" + tag);
    expect_close(dw, Tol{1e-4, 1e-5}, "rmsnorm_backward dw" + tag);  // sums over N rows
  }
}

TEST(CudaOps, RoPE) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(8);
  // Llama 3.1 scaling with a short original context, so the three bands all occur at D 32..128.
  RopeSpec llama3;
  llama3.theta = 500000;
  llama3.scaling = RopeScaling::Llama3;
  llama3.factor = 8;
  llama3.original_context = 256;
  struct Case {
    int B, T, H, D, pos0;
    RopeSpec spec;
  };
  for (const Case c : {Case{2, 19, 3, 64, 7, RopeSpec{10000.0}}, Case{1, 1, 4, 128, 1000, RopeSpec{10000.0}},
                       Case{3, 40, 2, 32, 0, RopeSpec{10000.0}}, Case{2, 19, 3, 64, 7, llama3},
                       Case{1, 3, 4, 128, 5000, llama3}}) {
    const std::size_t n = static_cast<std::size_t>(c.B) * c.T * c.H * c.D;
    const std::string tag = " D=" + std::to_string(c.D) + " pos0=" + std::to_string(c.pos0) +
                            (c.spec.scaling == RopeScaling::Llama3 ? " llama3" : "");
    const auto host = random_floats(n, rng);
    Mirror<float> x(be, host);
    be.gpu->rope_forward(x.gpu.get(), c.B, c.T, c.H, c.D, c.pos0, c.spec);
    be.cpu->rope_forward(x.cpu.get(), c.B, c.T, c.H, c.D, c.pos0, c.spec);
    expect_close(x, kMathTol, "rope_forward" + tag);
    Mirror<float> dx(be, random_floats(n, rng));
    be.gpu->rope_backward(dx.gpu.get(), c.B, c.T, c.H, c.D, c.pos0, c.spec);
    be.cpu->rope_backward(dx.cpu.get(), c.B, c.T, c.H, c.D, c.pos0, c.spec);
    expect_close(dx, kMathTol, "rope_backward" + tag);
    // The backward is the inverse rotation: forward then backward restores x.
    be.gpu->rope_backward(x.gpu.get(), c.B, c.T, c.H, c.D, c.pos0, c.spec);
    expect_close(x.gpu.download(), host, kMathTol, "rope round trip" + tag);
  }
  RopeSpec bad = llama3;
  bad.high_freq_factor = bad.low_freq_factor;
  Mirror<float> x(be, random_floats(64, rng));
  EXPECT_THROW(be.gpu->rope_forward(x.gpu.get(), 1, 1, 1, 64, 0, bad), std::invalid_argument);
}

TEST(CudaOps, Bias) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(9);
  for (const auto [N, C] : {std::pair{1, 7}, std::pair{37, 96}, std::pair{3000, 640}}) {
    const std::string tag = " N=" + std::to_string(N) + " C=" + std::to_string(C);
    const std::size_t nc = static_cast<std::size_t>(N) * C;
    Mirror<float> y(be, random_floats(nc, rng)), b(be, random_floats(C, rng));
    be.gpu->bias_forward(y.gpu.get(), b.gpu.get(), N, C);
    be.cpu->bias_forward(y.cpu.get(), b.cpu.get(), N, C);
    expect_close(y, kMathTol, "bias_forward" + tag);
    Mirror<float> dy(be, random_floats(nc, rng)), db(be, random_floats(C, rng));  // backward adds into db
    be.gpu->bias_backward(db.gpu.get(), dy.gpu.get(), N, C);
    be.cpu->bias_backward(db.cpu.get(), dy.cpu.get(), N, C);
    expect_close(db, Tol{1e-4, 1e-4}, "bias_backward" + tag);  // sums over N rows
  }
}

// ---------------------------------------------------------------- loss and optimizer

TEST(CudaOps, CrossEntropy) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(9);
  const int shapes[][2] = {{37, 1000}, {4, 50304}, {3, 7}};
  for (const auto& s : shapes) {
    const int N = s[0], V = s[1];
    const std::size_t nv = static_cast<std::size_t>(N) * V;
    const std::string tag = " N=" + std::to_string(N) + " V=" + std::to_string(V);
    auto targets = random_ints(N, rng, 0, V - 1);
    for (int n = 0; n < N; n += 5) targets[n] = -1;  // ignored positions
    const auto logits_host = random_floats(nv, rng, -6.f, 6.f);
    const float grad_scale = 1.f / N;
    Mirror<int32_t> tgt(be, targets);
    Mirror<float> logits(be, logits_host);
    Mirror<float> losses(be, random_floats(N, rng)), dlogits(be, random_floats(nv, rng));

    // 1. losses only
    be.gpu->cross_entropy(logits.gpu.get(), tgt.gpu.get(), losses.gpu.get(), nullptr, N, V, grad_scale);
    be.cpu->cross_entropy(logits.cpu.get(), tgt.cpu.get(), losses.cpu.get(), nullptr, N, V, grad_scale);
    expect_close(losses, kLossTol, "cross_entropy losses" + tag);
    // 2. separate dlogits (overwritten)
    be.gpu->cross_entropy(logits.gpu.get(), tgt.gpu.get(), losses.gpu.get(), dlogits.gpu.get(), N, V, grad_scale);
    be.cpu->cross_entropy(logits.cpu.get(), tgt.cpu.get(), losses.cpu.get(), dlogits.cpu.get(), N, V, grad_scale);
    expect_close(losses, kLossTol, "cross_entropy losses (with grad)" + tag);
    expect_close(dlogits, kDlogitsTol, "cross_entropy dlogits" + tag);
    // 3. dlogits aliasing logits
    be.gpu->cross_entropy(logits.gpu.get(), tgt.gpu.get(), losses.gpu.get(), logits.gpu.get(), N, V, grad_scale);
    be.cpu->cross_entropy(logits.cpu.get(), tgt.cpu.get(), losses.cpu.get(), logits.cpu.get(), N, V, grad_scale);
    expect_close(losses, kLossTol, "cross_entropy losses (aliased)" + tag);
    expect_close(logits, kDlogitsTol, "cross_entropy dlogits (aliased)" + tag);
    const auto aliased = logits.gpu.download();
    EXPECT_TRUE(bitwise_equal(aliased, dlogits.gpu.download())) << "aliased and separate dlogits differ" << tag;
    for (int n = 0; n < N; ++n) {
      if (targets[n] >= 0) continue;
      for (int j = 0; j < V; ++j) ASSERT_EQ(aliased[static_cast<std::size_t>(n) * V + j], 0.f) << "ignored row " << n;
    }
  }
}

// A target >= V: the CPU backend throws from cross_entropy; the CUDA backend reads its targets
// only on the device, so it throws the same std::invalid_argument at the next wait for its stream
// (here copy_to_host), naming the first bad row of the first failing call, and then works on.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(CudaOps, CrossEntropyReportsTargetsOutsideTheVocabulary) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(11);
  const int N = 5, V = 10;
  const std::vector<int32_t> bad = {1, -1, 12, 3, 10};  // rows 2 and 4 are out of range
  Mirror<int32_t> tgt(be, bad);
  Mirror<float> logits(be, random_floats(static_cast<std::size_t>(N) * V, rng));
  Mirror<float> losses(be, std::vector<float>(N, 1.f));
  const std::string cpu_error = error_of([&] {
    be.cpu->cross_entropy(logits.cpu.get(), tgt.cpu.get(), losses.cpu.get(), nullptr, N, V, 1.f);
  });
  EXPECT_EQ(cpu_error, cross_entropy_target_error(2, 12, V));
  be.gpu->cross_entropy(logits.gpu.get(), tgt.gpu.get(), losses.gpu.get(), nullptr, N, V, 1.f);
  std::vector<float> host(N);
  EXPECT_EQ(error_of([&] { be.gpu->copy_to_host(host.data(), losses.gpu.get(), N * sizeof(float)); }), cpu_error);
  // Reported once: the backend goes on, and a good call after it succeeds.
  const std::vector<int32_t> good = {1, -1, 9, 3, 0};
  Mirror<int32_t> ok(be, good);
  be.gpu->cross_entropy(logits.gpu.get(), ok.gpu.get(), losses.gpu.get(), nullptr, N, V, 1.f);
  be.cpu->cross_entropy(logits.cpu.get(), ok.cpu.get(), losses.cpu.get(), nullptr, N, V, 1.f);
  EXPECT_EQ(error_of([&] { be.gpu->synchronize(); }), "(no error)");
  expect_close(losses, kLossTol, "cross_entropy after a reported error");
  // Several calls before one wait: the first failing call is reported, with its own V.
  be.gpu->cross_entropy(logits.gpu.get(), ok.gpu.get(), losses.gpu.get(), nullptr, N, V, 1.f);
  be.gpu->cross_entropy(logits.gpu.get(), tgt.gpu.get(), losses.gpu.get(), nullptr, N, 8, 1.f);  // 12, 10 >= 8
  be.gpu->cross_entropy(logits.gpu.get(), tgt.gpu.get(), losses.gpu.get(), nullptr, N, V, 1.f);
  EXPECT_EQ(error_of([&] { be.gpu->synchronize(); }), cross_entropy_target_error(2, 12, 8));
  EXPECT_EQ(error_of([&] { be.gpu->synchronize(); }), "(no error)");
}

TEST(CudaOps, AdamW) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(10);
  const std::size_t n = 10007;
  Mirror<float> param(be, random_floats(n, rng)), m(be, std::vector<float>(n, 0.f)), v(be, std::vector<float>(n, 0.f));
  for (int step = 1; step <= 3; ++step) {
    Mirror<float> grad(be, random_floats(n, rng, -0.1f, 0.1f));
    be.gpu->adamw_step(param.gpu.get(), grad.gpu.get(), m.gpu.get(), v.gpu.get(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                       step, 0.5f);
    be.cpu->adamw_step(param.cpu.get(), grad.cpu.get(), m.cpu.get(), v.cpu.get(), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                       step, 0.5f);
    const std::string tag = " step " + std::to_string(step);
    expect_close(m, kMathTol, "adamw m" + tag);
    expect_close(v, Tol{1e-9, 1e-5}, "adamw v" + tag);
    expect_close(param, kMathTol, "adamw param" + tag);
  }
}

// ---------------------------------------------------------------- routed attention

struct AttnCase {
  int B, Tq, Tk, H, Hkv, D, q_pos0;
  int t_cap;     // time steps allocated per sequence in K/V (> Tk: KV-cache layout via kv_seq_stride)
  int n_layers;  // K/V layers that exist
  int layer;     // the querying layer: src[b] is drawn from [0, layer]
  int batch_source = -1;  // >= 0: every sequence reads this layer (routing.granularity batch)
  std::string name() const {
    std::ostringstream s;
    s << "B=" << B << " Tq=" << Tq << " Tk=" << Tk << " H=" << H << " Hkv=" << Hkv << " D=" << D
      << " q_pos0=" << q_pos0 << " t_cap=" << t_cap << (batch_source >= 0 ? " one source " + std::to_string(batch_source) : "");
    return s.str();
  }
};

// Per-backend host pointer arrays for the layers, as the model would build them.
struct LayerPointers {
  std::vector<const float*> k, v;
  std::vector<float*> dk, dv;
};

// Runs forward and backward of one routed attention call on both backends and
// compares out, lse, dq and every layer's dK/dV (including layers nobody routes
// to, which must stay untouched). K/V time steps >= Tk of a cache layout hold
// NaN: reading them anywhere would show.
std::vector<float> rounded_to_bf16(std::vector<float> v);

// cpu_twin: the CPU backend runs with gpu_options too, so in bf16 it runs its twin of the
// tensor-core kernels (src/cpu/attention_bf16_cpu.h) on the same unrounded inputs.
// cudnn: the GPU runs cuDNN attention (the caller checked it can), compared with the cuDNN rows.
void check_attention(const AttnCase& c, uint32_t seed, const BackendOptions& gpu_options = {}, bool cpu_twin = false,
                     bool cudnn = false) {
  SCOPED_TRACE(c.name() + (gpu_options.deterministic ? "" : " deterministic=false") + " precision " +
               gpu_options.precision + (cpu_twin ? " against the CPU twin" : "") + (cudnn ? " cuDNN" : ""));
  Backends be(gpu_options, cpu_twin ? gpu_options : BackendOptions{});
  // In bf16 against the fp32 CPU both backends get bf16-representable Q/K/V, so only the kernel's
  // own rounding differs.
  const bool bf16 = gpu_options.precision == "bf16";
  const bool round_inputs = bf16 && !cpu_twin;
  auto inputs = [round_inputs](std::vector<float> v) { return round_inputs ? rounded_to_bf16(std::move(v)) : v; };
  auto expect_attention_close = [&](const Mirror<float>& m, Tol tol, const std::string& what) {
    if (cudnn)
      expect_close(m, tol, what);
    else if (cpu_twin)
      expect_mostly_close(m, what.find("lse") != std::string::npos ? kAttentionTwinLseTol : kAttentionTwinTol, tol,
                          kAttentionTwinMaxOutliers, what);
    else
      expect_close(m, tol, what);
  };
  const Tol out_tol = cudnn ? kAttentionCudnnOutTol : bf16 ? kAttentionBf16OutTol : kAttentionTol;
  const Tol lse_tol = cudnn ? kAttentionCudnnLseTol : bf16 ? kAttentionBf16LseTol : kAttentionTol;
  const Tol grad_tol = cudnn ? kAttentionCudnnGradTol : bf16 ? kAttentionBf16GradTol : kAttentionTol;
  std::mt19937 rng(seed);
  const std::size_t kv_row = static_cast<std::size_t>(c.Hkv) * c.D;
  const std::size_t seq_stride = static_cast<std::size_t>(c.t_cap) * kv_row;
  const std::size_t kv_n = static_cast<std::size_t>(c.B) * seq_stride;
  const std::size_t q_n = static_cast<std::size_t>(c.B) * c.Tq * c.H * c.D;
  const std::size_t lse_n = static_cast<std::size_t>(c.B) * c.H * c.Tq;

  AttentionShape shape;
  shape.B = c.B;
  shape.Tq = c.Tq;
  shape.Tk = c.Tk;
  shape.n_heads = c.H;
  shape.n_kv_heads = c.Hkv;
  shape.head_dim = c.D;
  shape.q_pos0 = c.q_pos0;
  shape.scale = 1.f / std::sqrt(static_cast<float>(c.D));
  shape.kv_seq_stride = c.t_cap == c.Tk ? 0 : static_cast<long>(seq_stride);

  std::vector<Mirror<float>> K, V, dK, dV;
  K.reserve(c.n_layers);
  V.reserve(c.n_layers);
  dK.reserve(c.n_layers);
  dV.reserve(c.n_layers);
  LayerPointers pg, pc;
  for (int l = 0; l < c.n_layers; ++l) {
    auto k = inputs(random_floats(kv_n, rng)), v = inputs(random_floats(kv_n, rng));
    for (int b = 0; b < c.B; ++b)
      for (std::size_t e = static_cast<std::size_t>(c.Tk) * kv_row; e < seq_stride; ++e)
        k[b * seq_stride + e] = v[b * seq_stride + e] = std::numeric_limits<float>::quiet_NaN();
    K.emplace_back(be, k);
    V.emplace_back(be, v);
    dK.emplace_back(be, random_floats(kv_n, rng));  // backward adds into these
    dV.emplace_back(be, random_floats(kv_n, rng));
  }
  for (int l = 0; l < c.n_layers; ++l) {
    pg.k.push_back(K[l].gpu.get());
    pg.v.push_back(V[l].gpu.get());
    pg.dk.push_back(dK[l].gpu.get());
    pg.dv.push_back(dV[l].gpu.get());
    pc.k.push_back(K[l].cpu.get());
    pc.v.push_back(V[l].cpu.get());
    pc.dk.push_back(dK[l].cpu.get());
    pc.dv.push_back(dV[l].cpu.get());
  }
  auto src = random_ints(c.B, rng, 0, c.layer);
  src[0] = c.layer;               // ordinary self-attention
  if (c.B > 1) src[c.B - 1] = 0;  // routed to the first layer
  if (c.batch_source >= 0) std::fill(src.begin(), src.end(), c.batch_source);

  Mirror<float> q(be, inputs(random_floats(q_n, rng))), dout(be, random_floats(q_n, rng));
  Mirror<float> out(be, random_floats(q_n, rng)), lse(be, random_floats(lse_n, rng));
  Mirror<float> dq(be, random_floats(q_n, rng));

  auto forward = [&](Backend& backend, const LayerPointers& lp, const float* qp, float* outp, float* lsep) {
    AttentionForward f;
    f.shape = shape;
    f.q = qp;
    f.k_layers = lp.k.data();
    f.v_layers = lp.v.data();
    f.src = src.data();
    f.out = outp;
    f.lse = lsep;
    backend.attention_forward(f);
  };
  // Without lse first (decode), then with it.
  forward(*be.gpu, pg, q.gpu.get(), out.gpu.get(), nullptr);
  forward(*be.cpu, pc, q.cpu.get(), out.cpu.get(), nullptr);
  expect_attention_close(out, out_tol, "attention_forward out (no lse)");
  forward(*be.gpu, pg, q.gpu.get(), out.gpu.get(), lse.gpu.get());
  forward(*be.cpu, pc, q.cpu.get(), out.cpu.get(), lse.cpu.get());
  expect_attention_close(out, out_tol, "attention_forward out");
  expect_attention_close(lse, lse_tol, "attention_forward lse");

  auto backward = [&](Backend& backend, const LayerPointers& lp, const Mirror<float>& qm, bool on_gpu) {
    AttentionBackward b;
    b.shape = shape;
    b.q = on_gpu ? qm.gpu.get() : qm.cpu.get();
    b.k_layers = lp.k.data();
    b.v_layers = lp.v.data();
    b.src = src.data();
    b.out = on_gpu ? out.gpu.get() : out.cpu.get();
    b.lse = on_gpu ? lse.gpu.get() : lse.cpu.get();
    b.dout = on_gpu ? dout.gpu.get() : dout.cpu.get();
    b.dq = on_gpu ? dq.gpu.get() : dq.cpu.get();
    b.dk_layers = lp.dk.data();
    b.dv_layers = lp.dv.data();
    backend.attention_backward(b);
  };
  if (cpu_twin) {  // both backwards from the same out and lse: a forward rounding flip stays in the forward
    out.gpu.upload(out.cpu.download());
    lse.gpu.upload(lse.cpu.download());
  }
  backward(*be.gpu, pg, q, true);
  backward(*be.cpu, pc, q, false);
  expect_attention_close(dq, grad_tol, "attention_backward dq");
  for (int l = 0; l < c.n_layers; ++l) {
    expect_attention_close(dK[l], grad_tol, "attention_backward dK layer " + std::to_string(l));
    expect_attention_close(dV[l], grad_tol, "attention_backward dV layer " + std::to_string(l));
  }
}

TEST(CudaOps, AttentionRoutedGqaD64) {
  KVR_REQUIRE_CUDA();
  check_attention({4, 70, 70, 4, 2, 64, 0, 70, 3, 2}, 11);
}

TEST(CudaOps, AttentionRoutedGqaD128) {
  KVR_REQUIRE_CUDA();
  check_attention({3, 45, 45, 6, 2, 128, 0, 45, 3, 2}, 12);
}

TEST(CudaOps, AttentionRoutedMhaD32) {
  KVR_REQUIRE_CUDA();
  check_attention({5, 33, 33, 4, 4, 32, 0, 33, 3, 2}, 13);
}

TEST(CudaOps, AttentionGenericHeadDims) {
  KVR_REQUIRE_CUDA();
  check_attention({2, 40, 40, 2, 1, 48, 0, 40, 3, 2}, 14);   // padded into the D=64 kernel
  check_attention({2, 37, 37, 4, 2, 96, 0, 37, 3, 2}, 15);   // padded into the D=128 kernel
  check_attention({2, 20, 20, 2, 2, 8, 0, 20, 2, 1}, 16);    // padded into the D=32 kernel
}

TEST(CudaOps, AttentionSelfOnlyTileMultiples) {
  KVR_REQUIRE_CUDA();
  check_attention({2, 64, 64, 4, 1, 64, 0, 64, 1, 0}, 17);
}

TEST(CudaOps, AttentionDecodeFromCache) {
  KVR_REQUIRE_CUDA();
  check_attention({3, 1, 37, 4, 2, 64, 36, 64, 3, 2}, 18);
  check_attention({2, 1, 70, 8, 2, 128, 69, 96, 3, 2}, 19);
  check_attention({2, 1, 1, 2, 1, 64, 0, 8, 3, 2}, 20);  // first token
}

TEST(CudaOps, AttentionChunkedPrefill) {
  KVR_REQUIRE_CUDA();
  check_attention({2, 20, 70, 4, 1, 64, 50, 96, 3, 2}, 21);
  check_attention({2, 40, 100, 4, 2, 128, 60, 100, 3, 2}, 22);
}

// A model-shaped sequence of calls without synchronising: many layers forward,
// then backward in reverse with several layers routing into the same source,
// so dK/dV of a source layer accumulate over calls. More calls than the CUDA
// backend's pointer-table ring has slots.
TEST(CudaOps, AttentionManyLayersAccumulate) {
  KVR_REQUIRE_CUDA();
  Backends be;
  std::mt19937 rng(23);
  const int L = 24, B = 3, T = 17, H = 2, Hkv = 1, D = 32;
  const std::size_t q_n = static_cast<std::size_t>(B) * T * H * D;
  const std::size_t kv_n = static_cast<std::size_t>(B) * T * Hkv * D;
  AttentionShape shape;
  shape.B = B;
  shape.Tq = shape.Tk = T;
  shape.n_heads = H;
  shape.n_kv_heads = Hkv;
  shape.head_dim = D;
  shape.scale = 1.f / std::sqrt(static_cast<float>(D));

  std::vector<Mirror<float>> K, V, dK, dV, Q, dQ, out, lse, dout;
  for (auto* v : {&K, &V, &dK, &dV, &Q, &dQ, &out, &lse, &dout}) v->reserve(L);
  LayerPointers pg, pc;
  std::vector<std::vector<int32_t>> src(L);
  for (int l = 0; l < L; ++l) {
    K.emplace_back(be, random_floats(kv_n, rng));
    V.emplace_back(be, random_floats(kv_n, rng));
    dK.emplace_back(be, std::vector<float>(kv_n, 0.f));
    dV.emplace_back(be, std::vector<float>(kv_n, 0.f));
    Q.emplace_back(be, random_floats(q_n, rng));
    dQ.emplace_back(be, std::vector<float>(q_n, 0.f));
    out.emplace_back(be, std::vector<float>(q_n, 0.f));
    lse.emplace_back(be, std::vector<float>(static_cast<std::size_t>(B) * H * T, 0.f));
    dout.emplace_back(be, random_floats(q_n, rng));
    src[l] = random_ints(B, rng, std::max(0, l - 3), l);
  }
  for (int l = 0; l < L; ++l) {
    pg.k.push_back(K[l].gpu.get());
    pg.v.push_back(V[l].gpu.get());
    pg.dk.push_back(dK[l].gpu.get());
    pg.dv.push_back(dV[l].gpu.get());
    pc.k.push_back(K[l].cpu.get());
    pc.v.push_back(V[l].cpu.get());
    pc.dk.push_back(dK[l].cpu.get());
    pc.dv.push_back(dV[l].cpu.get());
  }
  for (int side = 0; side < 2; ++side) {
    const bool gpu = side == 0;
    Backend& backend = gpu ? *be.gpu : *be.cpu;
    const LayerPointers& lp = gpu ? pg : pc;
    auto pick = [gpu](Mirror<float>& m) { return gpu ? m.gpu.get() : m.cpu.get(); };
    for (int l = 0; l < L; ++l) {
      AttentionForward f;
      f.shape = shape;
      f.q = pick(Q[l]);
      f.k_layers = lp.k.data();
      f.v_layers = lp.v.data();
      f.src = src[l].data();
      f.out = pick(out[l]);
      f.lse = pick(lse[l]);
      backend.attention_forward(f);
    }
    for (int l = L - 1; l >= 0; --l) {
      AttentionBackward bw;
      bw.shape = shape;
      bw.q = pick(Q[l]);
      bw.k_layers = lp.k.data();
      bw.v_layers = lp.v.data();
      bw.src = src[l].data();
      bw.out = pick(out[l]);
      bw.lse = pick(lse[l]);
      bw.dout = pick(dout[l]);
      bw.dq = pick(dQ[l]);
      bw.dk_layers = lp.dk.data();
      bw.dv_layers = lp.dv.data();
      backend.attention_backward(bw);
    }
  }
  for (int l = 0; l < L; ++l) {
    const std::string tag = " layer " + std::to_string(l);
    expect_close(out[l], kAttentionTol, "out" + tag);
    expect_close(lse[l], kAttentionTol, "lse" + tag);
    expect_close(dQ[l], kAttentionTol, "dq" + tag);
    expect_close(dK[l], kAttentionTol, "dK" + tag);
    expect_close(dV[l], kAttentionTol, "dV" + tag);
  }
}

// ---------------------------------------------------------------- determinism

// Forward twice and backward twice with the same inputs give the same bits.
void check_attention_bitwise(const BackendOptions& options, const std::vector<int32_t>& src) {
  auto gpu = make_backend("cuda", options);
  std::mt19937 rng(24);
  const int B = 4, T = 96, H = 4, Hkv = 2, D = 64, L = 3;
  const std::size_t q_n = static_cast<std::size_t>(B) * T * H * D;
  const std::size_t kv_n = static_cast<std::size_t>(B) * T * Hkv * D;
  AttentionShape shape;
  shape.B = B;
  shape.Tq = shape.Tk = T;
  shape.n_heads = H;
  shape.n_kv_heads = Hkv;
  shape.head_dim = D;
  shape.scale = 1.f / std::sqrt(static_cast<float>(D));

  std::vector<DeviceBuffer<float>> K, V, dK, dV;
  std::vector<const float*> kp, vp;
  std::vector<float*> dkp, dvp;
  for (int l = 0; l < L; ++l) {
    K.emplace_back(gpu.get(), kv_n);
    V.emplace_back(gpu.get(), kv_n);
    dK.emplace_back(gpu.get(), kv_n);
    dV.emplace_back(gpu.get(), kv_n);
    K.back().upload(random_floats(kv_n, rng));
    V.back().upload(random_floats(kv_n, rng));
  }
  for (int l = 0; l < L; ++l) {
    kp.push_back(K[l].get());
    vp.push_back(V[l].get());
    dkp.push_back(dK[l].get());
    dvp.push_back(dV[l].get());
  }
  DeviceBuffer<float> q(gpu.get(), q_n), dout(gpu.get(), q_n), out(gpu.get(), q_n), dq(gpu.get(), q_n);
  DeviceBuffer<float> lse(gpu.get(), static_cast<std::size_t>(B) * H * T);
  q.upload(random_floats(q_n, rng));
  dout.upload(random_floats(q_n, rng));

  AttentionForward f;
  f.shape = shape;
  f.q = q.get();
  f.k_layers = kp.data();
  f.v_layers = vp.data();
  f.src = src.data();
  f.out = out.get();
  f.lse = lse.get();
  gpu->attention_forward(f);
  const auto out1 = out.download(), lse1 = lse.download();
  gpu->attention_forward(f);
  EXPECT_TRUE(bitwise_equal(out1, out.download())) << "forward out differs between runs";
  EXPECT_TRUE(bitwise_equal(lse1, lse.download())) << "forward lse differs between runs";

  AttentionBackward bw;
  bw.shape = shape;
  bw.q = q.get();
  bw.k_layers = kp.data();
  bw.v_layers = vp.data();
  bw.src = src.data();
  bw.out = out.get();
  bw.lse = lse.get();
  bw.dout = dout.get();
  bw.dq = dq.get();
  bw.dk_layers = dkp.data();
  bw.dv_layers = dvp.data();
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 2; ++run) {
    gpu->fill_zero(dq.get(), dq.bytes());
    for (int l = 0; l < L; ++l) {
      gpu->fill_zero(dK[l].get(), dK[l].bytes());
      gpu->fill_zero(dV[l].get(), dV[l].bytes());
    }
    gpu->attention_backward(bw);
    std::vector<std::vector<float>> got = {dq.download()};
    for (int l = 0; l < L; ++l) {
      got.push_back(dK[l].download());
      got.push_back(dV[l].download());
    }
    if (run == 0) {
      first = std::move(got);
    } else {
      for (std::size_t i = 0; i < got.size(); ++i)
        EXPECT_TRUE(bitwise_equal(first[i], got[i])) << "backward output " << i << " (0 = dq, then dK/dV per layer) "
                                                     << "differs between runs";
    }
  }
}

TEST(CudaOps, AttentionBackwardIsBitwiseDeterministic) {
  KVR_REQUIRE_CUDA();
  check_attention_bitwise(BackendOptions{}, {2, 0, 2, 1});  // two sequences share layer 2
}

// cuDNN's deterministic backward, and the dK/dV additions in a fixed order.
TEST(CudaOps, AttentionCudnnIsBitwiseDeterministic) {
  KVR_REQUIRE_CUDA();
  KVR_REQUIRE_CUDNN();
  check_attention_bitwise(BackendOptions{"bf16", true}, {2, 0, 2, 1});  // per sequence
  check_attention_bitwise(BackendOptions{"bf16", true}, {1, 1, 1, 1});  // one source layer
}

TEST(CudaOps, ReductionsAreBitwiseDeterministic) {
  KVR_REQUIRE_CUDA();
  auto gpu = make_backend("cuda");
  std::mt19937 rng(25);
  const int N = 777, C = 300, vocab = 40;
  const std::size_t nc = static_cast<std::size_t>(N) * C;
  DeviceBuffer<float> x(gpu.get(), nc), w(gpu.get(), C), out(gpu.get(), nc), rstd(gpu.get(), N), dout(gpu.get(), nc);
  DeviceBuffer<float> dx(gpu.get(), nc), dw(gpu.get(), C), dtable(gpu.get(), static_cast<std::size_t>(vocab) * C);
  DeviceBuffer<int32_t> ids(gpu.get(), N);
  x.upload(random_floats(nc, rng));
  w.upload(random_floats(C, rng));
  dout.upload(random_floats(nc, rng));
  ids.upload(random_ints(N, rng, 0, vocab - 1));
  gpu->rmsnorm_forward(out.get(), rstd.get(), x.get(), w.get(), N, C, 1e-5f);
  std::vector<float> dw1, dtable1;
  double ss1 = 0.0;
  for (int run = 0; run < 2; ++run) {
    gpu->fill_zero(dx.get(), dx.bytes());
    gpu->fill_zero(dw.get(), dw.bytes());
    gpu->fill_zero(dtable.get(), dtable.bytes());
    gpu->rmsnorm_backward(dx.get(), dw.get(), dout.get(), x.get(), w.get(), rstd.get(), N, C);
    gpu->embedding_backward(dtable.get(), dout.get(), ids.get(), N, C);
    const double ss = gpu->sum_squares(dout.get(), nc);
    if (run == 0) {
      dw1 = dw.download();
      dtable1 = dtable.download();
      ss1 = ss;
    } else {
      EXPECT_TRUE(bitwise_equal(dw1, dw.download())) << "rmsnorm dw differs between runs";
      EXPECT_TRUE(bitwise_equal(dtable1, dtable.download())) << "embedding dtable differs between runs";
      EXPECT_EQ(std::memcmp(&ss1, &ss, sizeof(double)), 0) << "sum_squares differs between runs";
    }
  }
}

// ---------------------------------------------------------------- atomic dQ (deterministic = false)

TEST(CudaOps, AttentionAtomicDqMatchesCpu) {
  KVR_REQUIRE_CUDA();
  const BackendOptions atomic{"fp32", false};
  check_attention({4, 70, 70, 4, 2, 64, 0, 70, 3, 2}, 31, atomic);
  check_attention({3, 45, 45, 6, 2, 128, 0, 45, 3, 2}, 32, atomic);
  check_attention({2, 40, 40, 2, 1, 48, 0, 40, 3, 2}, 33, atomic);
  check_attention({2, 20, 70, 4, 1, 64, 50, 96, 3, 2}, 34, atomic);  // chunked prefill (q_pos0 > 0)
  check_attention({3, 1, 37, 4, 2, 64, 36, 64, 3, 2}, 35, atomic);   // decode
}

// ---------------------------------------------------------------- bf16 attention (tensor cores)

TEST(CudaOps, AttentionBf16MatchesCpu) {
  KVR_REQUIRE_CUDA();
  const BackendOptions bf16 = bf16_wmma();
  check_attention({4, 70, 70, 4, 2, 64, 0, 70, 3, 2}, 51, bf16);     // GQA, partial tiles
  check_attention({3, 130, 130, 6, 2, 128, 0, 130, 3, 2}, 52, bf16); // D 128, three query tiles
  check_attention({2, 64, 64, 4, 1, 64, 0, 64, 1, 0}, 53, bf16);     // exact tile multiples, self only
  check_attention({2, 20, 70, 4, 1, 64, 50, 96, 3, 2}, 54, bf16);    // chunked prefill from a cache
  check_attention({3, 1, 37, 4, 2, 128, 36, 64, 3, 2}, 55, bf16);    // decode
  check_attention({2, 40, 40, 2, 1, 48, 0, 40, 3, 2}, 56, bf16);     // head_dim 48: the fp32 kernel
}

// The CPU backend in bf16 runs the twin of the tensor-core kernels (same rounding points), so the
// two agree far closer than bf16 does with fp32: kAttentionTwinTol.
TEST(CudaOps, AttentionBf16MatchesCpuTwin) {
  KVR_REQUIRE_CUDA();
  const BackendOptions bf16 = bf16_wmma();
  check_attention({4, 70, 70, 4, 2, 64, 0, 70, 3, 2}, 61, bf16, true);     // GQA, routed, partial tiles
  check_attention({3, 130, 130, 6, 2, 128, 0, 130, 3, 2}, 62, bf16, true); // D 128, three query tiles
  check_attention({2, 20, 70, 4, 1, 64, 50, 96, 3, 2}, 63, bf16, true);    // chunked prefill from a cache
  check_attention({3, 1, 37, 4, 2, 128, 36, 64, 3, 2}, 64, bf16, true);    // decode
  check_attention({2, 40, 40, 2, 1, 48, 0, 40, 3, 2}, 65, bf16, true);     // head_dim 48: fp32 on both
}

// ---------------------------------------------------------------- cuDNN attention

// cuDNN against the CPU bf16 twin at training shapes, routed per sequence and with one source
// layer for the whole batch (routing.granularity batch: K/V read from the source's buffer).
TEST(CudaOps, AttentionCudnnMatchesCpuTwin) {
  KVR_REQUIRE_CUDA();
  KVR_REQUIRE_CUDNN();
  for (const bool deterministic : {true, false}) {
    const BackendOptions bf16{"bf16", deterministic};
    check_attention({4, 70, 70, 4, 2, 64, 0, 70, 3, 2}, 71, bf16, true, true);           // per sequence
    check_attention({4, 70, 70, 4, 2, 64, 0, 70, 3, 2, 1}, 72, bf16, true, true);        // one source: layer 1
    check_attention({3, 130, 130, 6, 2, 128, 0, 130, 3, 2}, 73, bf16, true, true);       // head_dim 128
    check_attention({2, 128, 128, 12, 4, 128, 0, 128, 3, 2, 2}, 74, bf16, true, true);  // GQA 12/4, self only
  }
}

// Decode and prefill chunks keep the WMMA kernels in a backend that runs cuDNN for training.
TEST(CudaOps, AttentionCudnnBackendKeepsKernelsForDecode) {
  KVR_REQUIRE_CUDA();
  KVR_REQUIRE_CUDNN();
  const BackendOptions bf16{"bf16", true};
  check_attention({3, 1, 37, 4, 2, 128, 36, 64, 3, 2}, 75, bf16, true);   // decode: twin tolerances
  check_attention({2, 20, 70, 4, 1, 64, 50, 96, 3, 2}, 76, bf16, true);   // chunked prefill
}

// ---------------------------------------------------------------- bf16 matmul

std::vector<float> rounded_to_bf16(std::vector<float> v) {
  for (float& x : v) x = float_from_bf16(bf16_from_float(x));
  return v;
}

// GPU bf16 matmul on fp32 inputs == CPU fp32 matmul on the same inputs rounded to bf16 (the
// products of two bf16 values are exact in fp32; only the accumulation order differs).
TEST(CudaOps, MatmulBf16MatchesCpuOnRoundedOperands) {
  KVR_REQUIRE_CUDA();
  Backends be(BackendOptions{"bf16", true});
  std::mt19937 rng(40);
  const int sizes[][3] = {{37, 53, 29}, {64, 128, 256}, {1, 300, 17}, {5, 1, 8}, {256, 768, 768}};
  for (const auto& s : sizes) {
    const int M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (float beta : {0.f, 0.3f}) {
          const auto a = random_floats(static_cast<std::size_t>(M) * K, rng);
          const auto b = random_floats(static_cast<std::size_t>(K) * N, rng);
          const auto c0 = random_floats(static_cast<std::size_t>(M) * N, rng);
          DeviceBuffer<float> A(be.gpu.get(), a.size()), B(be.gpu.get(), b.size());
          // C one float past an aligned address: cuBLASLt must be told C is only 4-byte aligned.
          DeviceBuffer<float> C(be.gpu.get(), c0.size() + 1);
          A.upload(a);
          B.upload(b);
          be.gpu->copy_to_device(C.get() + 1, c0.data(), c0.size() * sizeof(float));
          Mirror<float> Ar(be, rounded_to_bf16(a)), Br(be, rounded_to_bf16(b)), Cr(be, c0);
          be.gpu->matmul(A.get(), B.get(), C.get() + 1, M, N, K, ta, tb, 0.7f, beta);
          be.cpu->matmul(Ar.cpu.get(), Br.cpu.get(), Cr.cpu.get(), M, N, K, ta, tb, 0.7f, beta);
          std::vector<float> got(c0.size());
          be.gpu->copy_to_host(got.data(), C.get() + 1, got.size() * sizeof(float));
          std::ostringstream what;
          what << "bf16 matmul M=" << M << " N=" << N << " K=" << K << " trans_a=" << ta << " trans_b=" << tb
               << " beta=" << beta;
          expect_close(got, Cr.cpu.download(), kMatmulTol, what.str());
        }
  }
}

// With B = identity every output is one product a * 1 plus zeros: C must equal the bf16
// rounding of A element for element (checks the cast kernel's vector and scalar paths).
TEST(CudaOps, MatmulBf16RoundsOperandsToNearestEven) {
  KVR_REQUIRE_CUDA();
  Backends be(BackendOptions{"bf16", true});
  std::mt19937 rng(41);
  for (int M : {64, 33}) {  // M * K divisible by 4 (vector casts) and not
    const int K = M == 64 ? 48 : 19;
    auto a = random_floats(static_cast<std::size_t>(M) * K, rng, -1e3f, 1e3f);
    a[1] = 1.00390625f;  // 1 + 2^-8: a tie, rounds to 1
    a[2] = 1.01171875f;  // 1 + 3 * 2^-8: a tie, rounds up to 1 + 2^-6
    a[3] = 3.0e38f;      // near the top of the range, still finite in bf16
    a[4] = -7.0e-30f;    // tiny but normal
    std::vector<float> eye(static_cast<std::size_t>(K) * K, 0.f);
    for (int i = 0; i < K; ++i) eye[static_cast<std::size_t>(i) * K + i] = 1.f;
    DeviceBuffer<float> A(be.gpu.get(), a.size()), I(be.gpu.get(), eye.size()), C(be.gpu.get(), a.size());
    A.upload(a);
    I.upload(eye);
    be.gpu->matmul(A.get(), I.get(), C.get(), M, K, K, false, false, 1.f, 0.f);
    const auto got = C.download();
    const auto want = rounded_to_bf16(a);
    for (std::size_t i = 0; i < a.size(); ++i)
      ASSERT_EQ(got[i], want[i]) << "M=" << M << " element " << i << ": a " << a[i];
  }
}

// train.deterministic restricts cuBLASLt to algorithms without a split-K reduction (gemm_layout.h):
// the second shape, a small output with a long K, is where a heuristic would otherwise split K.
TEST(CudaOps, MatmulBf16IsBitwiseDeterministic) {
  KVR_REQUIRE_CUDA();
  auto gpu = make_backend("cuda", BackendOptions{"bf16", true});
  std::mt19937 rng(42);
  const int shapes[][3] = {{512, 768, 2048}, {64, 64, 16384}, {768, 768, 16384}};
  for (const auto& s : shapes) {
    const int M = s[0], N = s[1], K = s[2];
    DeviceBuffer<float> A(gpu.get(), static_cast<std::size_t>(M) * K), B(gpu.get(), static_cast<std::size_t>(K) * N);
    DeviceBuffer<float> C(gpu.get(), static_cast<std::size_t>(M) * N);
    A.upload(random_floats(A.size(), rng));
    B.upload(random_floats(B.size(), rng));
    gpu->matmul(A.get(), B.get(), C.get(), M, N, K, true, false, 1.f, 0.f);  // a dW-shaped GEMM (long K)
    const auto first = C.download();
    for (int run = 0; run < 3; ++run) {
      gpu->matmul(A.get(), B.get(), C.get(), M, N, K, true, false, 1.f, 0.f);
      EXPECT_TRUE(bitwise_equal(first, C.download())) << "M=" << M << " N=" << N << " K=" << K << " run " << run;
    }
  }
}

// The NCCL communicator on one device (a world of one: every sum is the identity, so this checks
// plumbing, not arithmetic): started sums on the overlap stream and its split communicator,
// blocking collectives issued while they are still pending (each must queue behind them, not
// fail or hang), and the buffers unchanged at the end. Ordering across ranks needs two GPUs.
TEST(CudaOps, NcclStartedSumsAndBlockingCollectivesOnOneRank) {
  KVR_REQUIRE_CUDA();
  auto gpu = make_backend("cuda");
  auto comm = make_nccl_communicator_one_rank(*gpu);
  EXPECT_EQ(comm->name(), "NCCL");
  EXPECT_EQ(comm->world_size(), 1);
  std::mt19937 rng(60);
  const std::size_t n = 1 << 20;
  const auto ha = random_floats(n, rng), hb = random_floats(n, rng), hc = random_floats(n, rng);
  DeviceBuffer<float> a(gpu.get(), n), b(gpu.get(), n), c(gpu.get(), n);
  a.upload(ha);
  b.upload(hb);
  c.upload(hc);
  for (int round = 0; round < 3; ++round) {
    auto pa = comm->allreduce_sum_start(a.get(), n);
    auto pb = comm->allreduce_sum_start(b.get(), n / 2);
    comm->allgather_inplace(c.get(), n);  // while pa and pb may still run
    comm->broadcast(c.get(), n * sizeof(float), 0);
    comm->allreduce_sum(c.get(), n);
    pb->test();
    pa->wait();
    pb->wait();
  }
  {
    auto never_waited = comm->allreduce_sum_start(a.get(), n);  // its destructor waits on the host
  }
  EXPECT_DOUBLE_EQ(comm->sum(2.5), 2.5);
  EXPECT_TRUE(comm->any(true));
  EXPECT_TRUE(bitwise_equal(a.download(), ha));
  EXPECT_TRUE(bitwise_equal(b.download(), hb));
  EXPECT_TRUE(bitwise_equal(c.download(), hc));
}

TEST(CudaOps, PeakGemmProbe) {
  KVR_REQUIRE_CUDA();
  auto bf16 = make_backend("cuda", BackendOptions{"bf16", true});
  const double f = bf16->peak_gemm_flops(1024);
  EXPECT_GT(f, 1e12) << "a 1024^3 bf16 GEMM should run above 1 TFLOP/s on any sm_80+ GPU";
  EXPECT_EQ(bf16->peak_gemm_label(), "bf16 GEMM (cuBLASLt, fp32 accumulate)");
  auto fp32 = make_backend("cuda");
  EXPECT_EQ(fp32->peak_gemm_flops(1024), 0.0) << "fp32: bench train times its own sgemm";
}

// ---------------------------------------------------------------- memory accounting

TEST(CudaOps, MemoryAccounting) {
  KVR_REQUIRE_CUDA();
  auto gpu = make_backend("cuda");
  const BackendMemory before = gpu->memory();
  EXPECT_GT(before.device_total_bytes, 0u);
  {
    DeviceBuffer<float> a(gpu.get(), 1 << 20);
    const BackendMemory during = gpu->memory();
    EXPECT_EQ(during.in_use_bytes, before.in_use_bytes + (4u << 20));
    EXPECT_GE(during.peak_bytes, during.in_use_bytes);
    EXPECT_EQ(during.allocations, before.allocations + 1);
  }
  const BackendMemory after = gpu->memory();
  EXPECT_EQ(after.in_use_bytes, before.in_use_bytes);
  EXPECT_GE(after.peak_bytes, before.in_use_bytes + (4u << 20));
}

// ---------------------------------------------------------------- whole model step

// head_dim 64, so bf16 runs the tensor-core attention kernels; grouped KV heads.
ModelConfig small_model() {
  ModelConfig m;
  m.vocab_size = 96;
  m.d_model = 128;
  m.n_layers = 4;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.d_ff = 256;
  m.context = 128;
  return m;
}

using testing_step::model_step;
using testing_step::StepResult;

// Per tensor: |gpu - cpu| <= rel * (max |cpu| over the tensor) + rel * |cpu|.
void expect_tensors_close(const Model& layout, const std::vector<float>& gpu, const std::vector<float>& cpu,
                          double rel, const std::string& what) {
  for (const ParamTensor& t : layout.tensors()) {
    double scale = 0;
    for (std::size_t i = 0; i < t.numel; ++i) scale = std::max(scale, std::fabs(double(cpu[t.offset + i])));
    std::vector<float> g(gpu.begin() + t.offset, gpu.begin() + t.offset + t.numel);
    std::vector<float> c(cpu.begin() + t.offset, cpu.begin() + t.offset + t.numel);
    expect_close(g, c, Tol{rel * scale, rel}, what + " " + t.name);
  }
}

// AdamW's first step moves each weight by lr * g / (|g| + eps): about lr * sign(g), whatever
// |g|. Where the two backends' gradients could differ in sign (|g| within the gradient
// tolerance of 0) the steps may legitimately go opposite ways, so only weights whose CPU
// gradient exceeds `min_grad` times the tensor's largest are compared, and those tightly.
void expect_adamw_close(const Model& layout, const StepResult& gpu, const StepResult& cpu, double min_grad) {
  long compared = 0;
  for (const ParamTensor& t : layout.tensors()) {
    double scale = 0;
    for (std::size_t i = 0; i < t.numel; ++i) scale = std::max(scale, std::fabs(double(cpu.grads[t.offset + i])));
    std::vector<float> g, c;
    for (std::size_t i = t.offset; i < t.offset + t.numel; ++i) {
      if (std::fabs(double(cpu.grads[i])) <= min_grad * scale) continue;
      g.push_back(gpu.params_after[i]);
      c.push_back(cpu.params_after[i]);
    }
    compared += static_cast<long>(c.size());
    expect_close(g, c, Tol{1e-5, 1e-5}, "param after AdamW " + t.name);
  }
  EXPECT_GT(compared, 1000) << "too few weights with a clear gradient to compare";
}

TEST(CudaOps, ModelStepMatchesCpu) {
  KVR_REQUIRE_CUDA();
  const ModelConfig mc = small_model();
  const int B = 3, T = 100;  // two 64-row tiles, the second partial
  auto cpu = make_backend("cpu");
  const StepResult want = model_step(cpu.get(), mc, B, T, 5);
  Model layout(mc, cpu.get());
  for (const char* precision : {"fp32", "bf16"}) {
    for (bool det : {true, false}) {
      SCOPED_TRACE(std::string("precision ") + precision + (det ? "" : ", deterministic=false"));
      auto gpu = make_backend("cuda", BackendOptions{precision, det});
      const StepResult got = model_step(gpu.get(), mc, B, T, 5);
      const bool bf16 = std::string(precision) == "bf16";
      EXPECT_NEAR(got.loss, want.loss, (bf16 ? 2e-2 : 1e-5) * std::fabs(want.loss));
      expect_tensors_close(layout, got.grads, want.grads, bf16 ? 5e-2 : 1e-3, "grad");
      expect_adamw_close(layout, got, want, bf16 ? 0.1 : 0.01);
    }
  }
}

TEST(CudaOps, ModelStepWithFamilyFeaturesMatchesCpu) {
  // q/k/v biases, per-head q/k RMSNorm, head_dim 64 != d_model / n_heads, Llama 3.1 RoPE
  // scaling and an untied head: the ops the Llama / Qwen2 / Qwen3 imports run.
  KVR_REQUIRE_CUDA();
  ModelConfig mc = small_model();
  mc.n_heads = 4;
  mc.n_kv_heads = 2;
  mc.head_dim = 64;
  mc.qkv_bias = true;
  mc.qk_norm = true;
  mc.rope_scaling = "llama3";
  mc.rope_original_context = 64;
  mc.tie_embeddings = false;
  const int B = 3, T = 100;
  auto cpu = make_backend("cpu");
  const StepResult want = model_step(cpu.get(), mc, B, T, 6);
  Model layout(mc, cpu.get());
  auto gpu = make_backend("cuda");
  const StepResult got = model_step(gpu.get(), mc, B, T, 6);
  EXPECT_NEAR(got.loss, want.loss, 1e-5 * std::fabs(want.loss));
  expect_tensors_close(layout, got.grads, want.grads, 1e-3, "grad");
  expect_adamw_close(layout, got, want, 0.01);
}

TEST(CudaOps, ModelStepIsBitwiseDeterministic) {
  KVR_REQUIRE_CUDA();
  const ModelConfig mc = small_model();
  for (const char* precision : {"fp32", "bf16"}) {
    auto gpu = make_backend("cuda", BackendOptions{precision, true});
    const StepResult a = model_step(gpu.get(), mc, 3, 100, 9);
    const StepResult b = model_step(gpu.get(), mc, 3, 100, 9);
    EXPECT_EQ(std::memcmp(&a.loss, &b.loss, sizeof(float)), 0) << precision;
    EXPECT_TRUE(bitwise_equal(a.grads, b.grads)) << precision << ": gradients differ between runs";
    EXPECT_TRUE(bitwise_equal(a.params_after, b.params_after)) << precision << ": weights differ between runs";
  }
}

}  // namespace
}  // namespace kvroute

#else  // !KVROUTE_WITH_CUDA

TEST(CudaOps, BuiltWithoutCuda) { GTEST_SKIP() << "kvroute built without CUDA: GPU tests skipped"; }

#endif  // KVROUTE_WITH_CUDA
