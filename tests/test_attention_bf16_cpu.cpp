// The CPU's bf16 attention (src/cpu/attention_bf16_cpu.h), twin of the CUDA tensor-core kernels:
// - against the fp32 attention run on bf16-rounded inputs, within what rounding P (forward) and
//   P, dS (backward) to bf16 may change, per element (bounds below);
// - against a slow double reference that rounds exactly where the CUDA kernels round (small
//   shapes, tight tolerance): this is what pins the rounding points;
// - native (AVX512-BF16) against emulated, bitwise repeatability, CpuBackend's dispatch.
// Shapes cover routing (src != own layer), GQA, several key tiles, decode (Tq = 1, q_pos0 > 0)
// from a KV-cache layout whose unused slots hold NaN, and an odd head_dim.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/attention_bf16_cpu.h"
#include "cpu/cpu_backend.h"
#include "data_fixtures.h"
#include "kvroute/bf16.h"

namespace kvroute {
namespace {

using testing_data::random_floats;
using Floats = std::vector<float>;

constexpr double kBf16Unit = 1.0 / 256;  // bf16 keeps 8 significant bits: rounding moves x by <= 2^-8 |x|

float bf16(double x) { return float_from_bf16(bf16_from_float(static_cast<float>(x))); }
Floats rounded(Floats x) {
  for (float& v : x) v = bf16(v);
  return x;
}
Floats abs_of(Floats x) {
  for (float& v : x) v = std::fabs(v);
  return x;
}

std::vector<cpu::Bf16Path> paths_here() {
  std::vector<cpu::Bf16Path> p = {cpu::Bf16Path::Emulated};
  if (cpu::attention_bf16_native_available()) p.push_back(cpu::Bf16Path::Native);
  return p;
}
const char* path_name(cpu::Bf16Path p) { return p == cpu::Bf16Path::Native ? "native" : "emulated"; }

struct Case {
  int B, Tq, Tk, H, Hkv, D, q_pos0;
  int t_cap;     // time steps allocated per sequence in K/V (> Tk: a KV cache, slots past Tk hold NaN)
  int n_layers;  // K/V layers; sequence b reads layer src[b]
  std::vector<int32_t> src;
  std::string name() const {
    std::ostringstream s;
    s << "B=" << B << " Tq=" << Tq << " Tk=" << Tk << " H=" << H << " Hkv=" << Hkv << " D=" << D
      << " q_pos0=" << q_pos0 << " t_cap=" << t_cap;
    return s.str();
  }
  std::size_t kv_row() const { return static_cast<std::size_t>(Hkv) * D; }
  std::size_t seq_stride() const { return t_cap * kv_row(); }
  std::size_t q_size() const { return static_cast<std::size_t>(B) * Tq * H * D; }
  std::size_t lse_size() const { return static_cast<std::size_t>(B) * H * Tq; }
  AttentionShape shape() const {
    AttentionShape s;
    s.B = B;
    s.Tq = Tq;
    s.Tk = Tk;
    s.n_heads = H;
    s.n_kv_heads = Hkv;
    s.head_dim = D;
    s.q_pos0 = q_pos0;
    s.scale = 1.f / std::sqrt(static_cast<float>(D));
    s.kv_seq_stride = t_cap == Tk ? 0 : static_cast<long>(seq_stride());
    return s;
  }
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {4, 70, 70, 4, 2, 64, 0, 70, 3, {2, 0, 1, 2}},    // GQA, routed, two key tiles (the second partial)
      {2, 100, 100, 4, 2, 128, 0, 100, 2, {1, 0}},      // head_dim 128, routed
      {3, 1, 37, 4, 2, 64, 36, 64, 3, {2, 1, 0}},       // decode from a cache
      {2, 20, 70, 4, 1, 64, 50, 96, 2, {1, 0}},         // chunked prefill from a cache
      {2, 33, 33, 2, 1, 21, 0, 33, 1, {0, 0}},          // odd head_dim (direct calls only)
  };
  return c;
}

// The tensors of one forward + backward call. dk/dv start non-zero: backward adds into them.
struct Tensors {
  std::vector<Floats> k, v, dk, dv;
  Floats q, dout, out, lse, dq;
};

Tensors make_inputs(const Case& c, uint32_t seed) {
  Tensors t;
  const std::size_t kv_n = c.B * c.seq_stride();
  for (int l = 0; l < c.n_layers; ++l) {
    t.k.push_back(random_floats(kv_n, seed + 10 * l + 1));
    t.v.push_back(random_floats(kv_n, seed + 10 * l + 2));
    t.dk.push_back(random_floats(kv_n, seed + 10 * l + 3));
    t.dv.push_back(random_floats(kv_n, seed + 10 * l + 4));
    for (int b = 0; b < c.B; ++b)
      for (std::size_t e = c.Tk * c.kv_row(); e < c.seq_stride(); ++e)
        t.k[l][b * c.seq_stride() + e] = t.v[l][b * c.seq_stride() + e] = std::numeric_limits<float>::quiet_NaN();
  }
  t.q = random_floats(c.q_size(), seed + 101);
  t.dout = random_floats(c.q_size(), seed + 102);
  t.dq = random_floats(c.q_size(), seed + 103);
  t.out.assign(c.q_size(), 0.f);
  t.lse.assign(c.lse_size(), 0.f);
  return t;
}

// Which attention computes: a backend, or the bf16 kernels called directly on a path.
struct Runner {
  Backend* backend = nullptr;
  cpu::Bf16Path path = cpu::Bf16Path::Emulated;
  void forward(const AttentionForward& p) const {
    if (backend)
      backend->attention_forward(p);
    else
      cpu::attention_forward_bf16(p, path);
  }
  void backward(const AttentionBackward& p) const {
    if (backend)
      backend->attention_backward(p);
    else
      cpu::attention_backward_bf16(p, path);
  }
};

void run_forward(const Runner& r, const Case& c, Tensors& t) {
  std::vector<const float*> kp, vp;
  for (int l = 0; l < c.n_layers; ++l) {
    kp.push_back(t.k[l].data());
    vp.push_back(t.v[l].data());
  }
  AttentionForward f;
  f.shape = c.shape();
  f.q = t.q.data();
  f.k_layers = kp.data();
  f.v_layers = vp.data();
  f.src = c.src.data();
  f.out = t.out.data();
  f.lse = t.lse.data();
  r.forward(f);
}

// Uses t.out and t.lse as they are (the forward's, or ones the test put there).
void run_backward(const Runner& r, const Case& c, Tensors& t) {
  std::vector<const float*> kp, vp;
  std::vector<float*> dkp, dvp;
  for (int l = 0; l < c.n_layers; ++l) {
    kp.push_back(t.k[l].data());
    vp.push_back(t.v[l].data());
    dkp.push_back(t.dk[l].data());
    dvp.push_back(t.dv[l].data());
  }
  AttentionBackward b;
  b.shape = c.shape();
  b.q = t.q.data();
  b.k_layers = kp.data();
  b.v_layers = vp.data();
  b.src = c.src.data();
  b.out = t.out.data();
  b.lse = t.lse.data();
  b.dout = t.dout.data();
  b.dq = t.dq.data();
  b.dk_layers = dkp.data();
  b.dv_layers = dvp.data();
  r.backward(b);
}

// ---- the slow double reference ----
// From inputs whose Q, K, V (and, for the products, dout) it rounds to bf16 itself, with the
// given out / lse for the backward (delta = dout . out from the unrounded dout, as CUDA):
//   twin      what the CUDA kernels compute, rounding where they round (P per 64-key tile
//             relative to the running max, P and dS in the backward), summed in double;
//   fp32      the same without rounding P and dS (the fp32 attention on rounded inputs);
//   bound     sum of |terms| that rounding P or dS touches (times scale for dK, dq), so
//             |twin - fp32| <= 2^-8 * bound per element;
//   magnitude sum of |terms| before cancellation, for the fp32 summation-order slack.
struct Reference {
  Tensors twin, fp32, bound, magnitude;
};

Reference reference(const Case& c, const Tensors& in, const Floats& out_for_backward, const Floats& lse_for_backward) {
  Reference r;
  for (Tensors* t : {&r.twin, &r.fp32, &r.bound, &r.magnitude}) {
    t->out.assign(c.q_size(), 0.f);
    t->lse.assign(c.lse_size(), 0.f);
    t->dq.assign(c.q_size(), 0.f);
    t->dk.assign(c.n_layers, Floats(c.B * c.seq_stride(), 0.f));
    t->dv = t->dk;
  }
  const double scale = c.shape().scale;
  const int group = c.H / c.Hkv;
  const Floats q = rounded(in.q), dout_r = rounded(in.dout);
  std::vector<Floats> K, V;
  for (int l = 0; l < c.n_layers; ++l) {
    K.push_back(rounded(in.k[l]));
    V.push_back(rounded(in.v[l]));
  }
  std::vector<double> dq_twin(c.q_size()), dq_fp32(c.q_size()), dq_bound(c.q_size()), dq_mag(c.q_size());
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const int layer = c.src[b];
      const std::size_t kv0 = b * c.seq_stride() + static_cast<std::size_t>(h / group) * c.D;
      auto key = [&](const Floats& x, int j) { return &x[kv0 + j * c.kv_row()]; };
      for (int i = 0; i < c.Tq; ++i) {
        const std::size_t qo = (static_cast<std::size_t>(b) * c.Tq + i) * c.H * c.D + static_cast<std::size_t>(h) * c.D;
        const std::size_t lo = (static_cast<std::size_t>(b) * c.H + h) * c.Tq + i;
        const int n = std::min(c.Tk, c.q_pos0 + i + 1);
        std::vector<double> s(n), dp(n);
        for (int j = 0; j < n; ++j) {
          double dot = 0, dpd = 0;
          for (int d = 0; d < c.D; ++d) {
            dot += double(q[qo + d]) * key(K[layer], j)[d];
            dpd += double(dout_r[qo + d]) * key(V[layer], j)[d];
          }
          s[j] = float(dot) * scale;
          dp[j] = dpd;
        }
        // Forward: online softmax over tiles of 64 keys.
        const double M = *std::max_element(s.begin(), s.end());
        double l = 0, m = -INFINITY;
        std::vector<double> weight_twin(n), weight(n);  // of v_j in out, before dividing by l
        for (int j0 = 0; j0 < n; j0 += 64) {
          const int j1 = std::min(n, j0 + 64);
          m = std::max(m, *std::max_element(s.begin() + j0, s.begin() + j1));
          for (int j = j0; j < j1; ++j) {
            weight_twin[j] = bf16(std::exp(s[j] - m)) * std::exp(m - M);
            weight[j] = std::exp(s[j] - M);
            l += weight[j];
          }
        }
        for (int d = 0; d < c.D; ++d) {
          double o_twin = 0, o = 0, o_abs = 0;
          for (int j = 0; j < n; ++j) {
            const double v = key(V[layer], j)[d];
            o_twin += weight_twin[j] * v;
            o += weight[j] * v;
            o_abs += weight[j] * std::fabs(v);
          }
          r.twin.out[qo + d] = static_cast<float>(o_twin / l);
          r.fp32.out[qo + d] = static_cast<float>(o / l);
          r.bound.out[qo + d] = r.magnitude.out[qo + d] = static_cast<float>(o_abs / l);
        }
        r.twin.lse[lo] = r.fp32.lse[lo] = static_cast<float>(M + std::log(l));

        // Backward, from the given out and lse.
        double delta = 0;
        for (int d = 0; d < c.D; ++d) delta += double(in.dout[qo + d]) * out_for_backward[qo + d];
        for (int j = 0; j < n; ++j) {
          const double p = std::exp(s[j] - lse_for_backward[lo]);
          const double ds = p * (dp[j] - delta);
          const double p_twin = bf16(p), ds_twin = bf16(ds);
          const double ds_mag = p * (std::fabs(dp[j]) + std::fabs(delta));
          const std::size_t ko = kv0 + j * c.kv_row();
          for (int d = 0; d < c.D; ++d) {
            const double go = dout_r[qo + d], qd = q[qo + d], kd = K[layer][ko + d];
            r.twin.dv[layer][ko + d] += static_cast<float>(p_twin * go);
            r.fp32.dv[layer][ko + d] += static_cast<float>(p * go);
            r.bound.dv[layer][ko + d] += static_cast<float>(p * std::fabs(go));
            r.magnitude.dv[layer][ko + d] += static_cast<float>(p * std::fabs(go));
            r.twin.dk[layer][ko + d] += static_cast<float>(scale * ds_twin * qd);
            r.fp32.dk[layer][ko + d] += static_cast<float>(scale * ds * qd);
            r.bound.dk[layer][ko + d] += static_cast<float>(scale * std::fabs(ds * qd));
            r.magnitude.dk[layer][ko + d] += static_cast<float>(scale * ds_mag * std::fabs(qd));
            dq_twin[qo + d] += scale * ds_twin * kd;
            dq_fp32[qo + d] += scale * ds * kd;
            dq_bound[qo + d] += scale * std::fabs(ds * kd);
            dq_mag[qo + d] += scale * ds_mag * std::fabs(kd);
          }
        }
      }
    }
  for (std::size_t e = 0; e < c.q_size(); ++e) {
    r.twin.dq[e] = static_cast<float>(dq_twin[e]);
    r.fp32.dq[e] = static_cast<float>(dq_fp32[e]);
    r.bound.dq[e] = static_cast<float>(dq_bound[e]);
    r.magnitude.dq[e] = static_cast<float>(dq_mag[e]);
  }
  return r;
}

// got - start (what a backward added) against want, within rounding * bound + slack * magnitude
// + atol per element. NaN in the bound (cache slots nobody reads) means "must be unchanged".
void expect_within(const Floats& got, const Floats& start, const Floats& want, const Floats& bound,
                   const Floats& magnitude, double rounding, double slack, double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::size_t bad = 0, worst_i = 0;
  double worst = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double base = start.empty() ? 0.0 : start[i];
    if (std::isnan(base)) {
      if (!std::isnan(got[i])) ++bad;
      continue;
    }
    const double diff = std::fabs(double(got[i]) - base - want[i]);
    const double limit = rounding * bound[i] + slack * magnitude[i] + atol;
    if (!(diff <= limit)) {
      ++bad;
      if (!(diff - limit <= worst)) {
        worst = std::isnan(diff) ? INFINITY : diff - limit;
        worst_i = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of bounds; worst at ["
                     << worst_i << "] got " << got[worst_i] - (start.empty() ? 0.f : start[worst_i]) << " want "
                     << want[worst_i] << " bound " << bound[worst_i];
}

// The gradients a backward added (start: the buffers before it).
void expect_grads_within(const Case& c, const Tensors& got, const Tensors& start, const Tensors& want,
                         const Tensors& bound, const Tensors& magnitude, double rounding, double slack, double atol,
                         const std::string& what) {
  expect_within(got.dq, start.dq, want.dq, bound.dq, magnitude.dq, rounding, slack, atol, what + " dq");
  for (int l = 0; l < c.n_layers; ++l) {
    expect_within(got.dk[l], start.dk[l], want.dk[l], bound.dk[l], magnitude.dk[l], rounding, slack, atol,
                  what + " dK layer " + std::to_string(l));
    expect_within(got.dv[l], start.dv[l], want.dv[l], bound.dv[l], magnitude.dv[l], rounding, slack, atol,
                  what + " dV layer " + std::to_string(l));
  }
}

// Backward inputs shared by the runs compared: dout rounded already (so the fp32 attention's
// delta = dout . out is the bf16 kernels' own), out and lse from the double reference.
Tensors backward_inputs(const Case& c, uint32_t seed, const Floats& out, const Floats& lse) {
  Tensors t = make_inputs(c, seed);
  t.dout = rounded(t.dout);
  t.out = out;
  t.lse = lse;
  return t;
}

// bf16 against the fp32 attention on bf16-rounded Q/K/V (and dout). Both compute the same exact
// products; the bf16 kernels also round P (forward), P and dS (backward), each by at most
// 2^-8 relative, so per element |bf16 - fp32| <= 2^-8 * (the sum of |terms| so rounded), plus
// fp32 summation order (1e-5 of the terms' magnitude: sums of <= 200 terms differ by far less)
// and 1e-6 absolute. lse involves no rounded P: fp32 tolerance. The bf16 kernels get the
// unrounded Q, K, V, so their own rounding of the inputs is checked too.
TEST(AttentionBf16Cpu, MatchesFp32AttentionOfRoundedInputsWithinBf16Rounding) {
  CpuBackend fp32;
  for (const Case& c : cases()) {
    const uint32_t seed = 7 + c.D + c.Tq;
    const Tensors in = make_inputs(c, seed);
    Tensors in_rounded = in;
    in_rounded.q = rounded(in.q);
    for (auto& x : in_rounded.k) x = rounded(x);
    for (auto& x : in_rounded.v) x = rounded(x);
    Tensors want = in_rounded;
    run_forward(Runner{&fp32}, c, want);
    const Tensors start = backward_inputs(c, seed, want.out, want.lse);
    const Reference ref = reference(c, start, want.out, want.lse);  // delta from the rounded dout
    Tensors want_grads = start;
    want_grads.q = in_rounded.q;
    want_grads.k = in_rounded.k;
    want_grads.v = in_rounded.v;
    run_backward(Runner{&fp32}, c, want_grads);
    for (cpu::Bf16Path path : paths_here()) {
      SCOPED_TRACE(c.name() + " " + path_name(path));
      Tensors got = in;
      run_forward(Runner{nullptr, path}, c, got);
      expect_within(got.out, {}, want.out, ref.bound.out, ref.magnitude.out, kBf16Unit, 1e-5, 1e-6, "out");
      expect_within(got.lse, {}, want.lse, Floats(c.lse_size(), 0.f), abs_of(want.lse), 0, 1e-5, 1e-5, "lse");

      Tensors grads = start;
      run_backward(Runner{nullptr, path}, c, grads);
      // want_grads holds start + the fp32 gradients: compare what each added.
      Tensors fp32_added = want_grads;
      auto minus = [](Floats a, const Floats& b) {
        for (std::size_t i = 0; i < a.size(); ++i) a[i] -= std::isnan(b[i]) ? 0.f : b[i];
        return a;
      };
      fp32_added.dq = minus(want_grads.dq, start.dq);
      for (int l = 0; l < c.n_layers; ++l) {
        fp32_added.dk[l] = minus(want_grads.dk[l], start.dk[l]);
        fp32_added.dv[l] = minus(want_grads.dv[l], start.dv[l]);
      }
      expect_grads_within(c, grads, start, fp32_added, ref.bound, ref.magnitude, kBf16Unit, 1e-5, 1e-5,
                          "backward");
    }
  }
}

// Against the double reference that rounds where the CUDA kernels round, on small shapes: the
// kernels' fp32 sums and polynomial exp differ from it by ~1e-7 relative, far below a bf16
// rounding step (2^-8), so a rounding point missing, added or moved shows as an error ~1e-3
// while a correct kernel stays within 2e-5 (a rare value within ~1e-7 of a bf16 rounding
// boundary could round the other way: these seeds have none).
TEST(AttentionBf16Cpu, RoundsWhereTheCudaKernelsRound) {
  const std::vector<Case> small = {
      {2, 1, 40, 2, 1, 64, 39, 48, 2, {1, 0}},   // decode, routed, from a cache
      {1, 12, 12, 2, 2, 64, 0, 12, 1, {0}},      // prefill
      {1, 1, 80, 1, 1, 64, 79, 80, 1, {0}},      // two key tiles: P rounded against the running max
  };
  for (const Case& c : small)
    for (cpu::Bf16Path path : paths_here()) {
      SCOPED_TRACE(c.name() + " " + path_name(path));
      const Tensors in = make_inputs(c, 3 + c.Tk);
      Tensors got = in;
      run_forward(Runner{nullptr, path}, c, got);
      const Reference ref = reference(c, in, got.out, got.lse);
      const Floats zero(c.q_size(), 0.f);
      expect_within(got.out, {}, ref.twin.out, zero, ref.magnitude.out, 0, 2e-5, 1e-6, "out");
      expect_within(got.lse, {}, ref.twin.lse, Floats(c.lse_size(), 0.f), abs_of(ref.twin.lse), 0, 1e-5, 1e-5, "lse");
      // The unrounded dout: the kernels round it for the products, delta uses it as it is.
      Tensors grads = got;
      const Tensors start = got;
      run_backward(Runner{nullptr, path}, c, grads);
      expect_grads_within(c, grads, start, ref.twin, ref.bound, ref.magnitude, 0, 2e-5, 1e-5, "backward");
      // and the rounding matters at this tolerance: fp32 P / dS would not pass
      double largest_rounding_effect = 0;
      for (std::size_t i = 0; i < c.q_size(); ++i)
        largest_rounding_effect = std::max(largest_rounding_effect, std::fabs(double(ref.twin.out[i]) - ref.fp32.out[i]));
      EXPECT_GT(largest_rounding_effect, 1e-4) << "the shape should make P's rounding visible";
    }
}

// Both paths compute the same products in the same order (bf16_tile_gemm.h): equal where the
// instruction adds as documented (this AMD EPYC: bit for bit), and always within P's rounding bound.
TEST(AttentionBf16Cpu, NativeMatchesEmulated) {
  if (!cpu::attention_bf16_native_available()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name());
    const Tensors in = make_inputs(c, 11 + c.D);
    Tensors native = in, emulated = in;
    run_forward(Runner{nullptr, cpu::Bf16Path::Native}, c, native);
    run_forward(Runner{nullptr, cpu::Bf16Path::Emulated}, c, emulated);
    const Reference ref = reference(c, in, native.out, native.lse);
    expect_within(native.out, {}, emulated.out, ref.bound.out, ref.magnitude.out, 2 * kBf16Unit, 1e-5, 1e-6, "out");
    emulated.out = native.out;  // the same backward inputs
    emulated.lse = native.lse;
    const Tensors start = native;
    run_backward(Runner{nullptr, cpu::Bf16Path::Native}, c, native);
    run_backward(Runner{nullptr, cpu::Bf16Path::Emulated}, c, emulated);
    auto added = [&](const Tensors& t) {
      Tensors a = t;
      for (std::size_t i = 0; i < a.dq.size(); ++i) a.dq[i] -= start.dq[i];
      for (int l = 0; l < c.n_layers; ++l)
        for (std::size_t i = 0; i < a.dk[l].size(); ++i) {
          a.dk[l][i] -= std::isnan(start.dk[l][i]) ? 0.f : start.dk[l][i];
          a.dv[l][i] -= std::isnan(start.dv[l][i]) ? 0.f : start.dv[l][i];
        }
      return a;
    };
    expect_grads_within(c, native, start, added(emulated), ref.bound, ref.magnitude, 2 * kBf16Unit, 1e-5, 1e-5,
                        "backward");
  }
}

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Every output element is summed by one thread in a fixed order: the same bits on every run
// and any thread count.
TEST(AttentionBf16Cpu, BitwiseRepeatableAcrossRunsAndThreadCounts) {
  const Case& c = cases()[0];
  for (cpu::Bf16Path path : paths_here()) {
    SCOPED_TRACE(path_name(path));
    const Tensors in = make_inputs(c, 5);
    std::vector<Tensors> runs;
    const int threads = omp_get_max_threads();
    for (int n_threads : {threads, threads, 1}) {
      omp_set_num_threads(n_threads);
      Tensors t = in;
      run_forward(Runner{nullptr, path}, c, t);
      run_backward(Runner{nullptr, path}, c, t);
      runs.push_back(t);
    }
    omp_set_num_threads(threads);
    for (int r = 1; r < 3; ++r) {
      EXPECT_TRUE(bitwise_equal(runs[r].out, runs[0].out)) << "run " << r;
      EXPECT_TRUE(bitwise_equal(runs[r].lse, runs[0].lse)) << "run " << r;
      EXPECT_TRUE(bitwise_equal(runs[r].dq, runs[0].dq)) << "run " << r;
      for (int l = 0; l < c.n_layers; ++l) {
        EXPECT_TRUE(bitwise_equal(runs[r].dk[l], runs[0].dk[l])) << "run " << r << " layer " << l;
        EXPECT_TRUE(bitwise_equal(runs[r].dv[l], runs[0].dv[l])) << "run " << r << " layer " << l;
      }
    }
  }
}

// CpuBackend in bf16 runs these kernels at head_dim 64 and 128 (as CUDA runs its tensor-core
// ones) on the matmul's path, and the fp32 attention at other head dims; fp32 never changes.
TEST(AttentionBf16Cpu, CpuBackendDispatchesAsCuda) {
  for (cpu::Bf16Path path : paths_here()) {
    SCOPED_TRACE(path_name(path));
    CpuBackend bf16_backend(BackendOptions{"bf16", true}, path);
    EXPECT_EQ(bf16_backend.bf16_attention_path(), path);
    CpuBackend fp32;
    for (const Case& c : {cases()[2], cases()[4]}) {  // head_dim 64, then 21
      const Tensors in = make_inputs(c, 9);
      Tensors via_backend = in, direct = in, plain = in;
      run_forward(Runner{&bf16_backend}, c, via_backend);
      run_backward(Runner{&bf16_backend}, c, via_backend);
      run_forward(Runner{nullptr, path}, c, direct);
      run_backward(Runner{nullptr, path}, c, direct);
      run_forward(Runner{&fp32}, c, plain);
      run_backward(Runner{&fp32}, c, plain);
      const Tensors& want = attention_bf16_head_dim(c.D) ? direct : plain;
      EXPECT_TRUE(bitwise_equal(via_backend.out, want.out)) << c.name();
      EXPECT_TRUE(bitwise_equal(via_backend.dq, want.dq)) << c.name();
      EXPECT_TRUE(bitwise_equal(via_backend.dk[0], want.dk[0])) << c.name();
      EXPECT_FALSE(bitwise_equal(direct.out, plain.out)) << c.name() << ": bf16 and fp32 should differ";
    }
  }
}

TEST(AttentionBf16Cpu, RejectsBadShapesAsTheFp32Kernels) {
  const Case& c = cases()[0];
  Tensors t = make_inputs(c, 1);
  Case bad = c;
  bad.Hkv = 3;  // does not divide H
  EXPECT_THROW(run_forward(Runner{nullptr, cpu::Bf16Path::Emulated}, bad, t), std::invalid_argument);
  EXPECT_THROW(run_backward(Runner{nullptr, cpu::Bf16Path::Emulated}, bad, t), std::invalid_argument);
  if (!cpu::attention_bf16_native_available())
    EXPECT_THROW(run_forward(Runner{nullptr, cpu::Bf16Path::Native}, c, t), std::invalid_argument);
}

}  // namespace
}  // namespace kvroute
