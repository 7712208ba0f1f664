// The host logic of cuDNN fused attention (cuda/cudnn_attention_plan.h), checked on any machine:
// which path a call takes and why, the graph cache key, the dims and strides that describe
// kvroute's [B, T, H, D] tensors to cuDNN, the scratch layout, and where dK/dV are added.
// In a CUDA build with cuDNN it also builds the cudnn-frontend graphs for an H100 (sm_90, 132
// SMs) and runs validate(), which needs no GPU; anything that needs a cuDNN handle (a driver)
// is skipped here and runs in tests/test_cuda_ops.cpp on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "../cuda/cudnn_attention_plan.h"
#include "kvroute/attention_dims.h"

#ifdef KVROUTE_WITH_CUDA
#include "../cuda/cudnn_attention.h"
#endif

namespace kvroute {
namespace {

constexpr std::size_t kH100Smem = 227 * 1024;  // sm_90's shared memory per block (opt-in)
constexpr std::size_t kL40Smem = 99 * 1024;     // sm_86 / sm_89

AttentionPathInputs training(bool bf16, int head_dim, std::string cudnn_unavailable = "",
                             std::size_t smem = kH100Smem) {
  AttentionPathInputs in;
  in.bf16 = bf16;
  in.head_dim = head_dim;
  in.Tq = in.Tk = 1024;
  in.q_pos0 = 0;
  in.smem_optin_limit = smem;
  in.cudnn_unavailable = std::move(cudnn_unavailable);
  return in;
}

TEST(CudnnAttentionPath, Bf16TrainingShapesRunCudnn) {
  for (int hd : {64, 128}) {
    const AttentionPathChoice c = choose_attention_path(training(true, hd));
    EXPECT_EQ(c.path, AttentionPath::Cudnn) << hd;
    EXPECT_EQ(c.why, "attention at head_dim " + std::to_string(hd) +
                         ": cuDNN fused attention (bf16 I/O, fp32 softmax and sums)");
    EXPECT_TRUE(c.error.empty());
  }
  // cuDNN manages its own shared memory: a 99 KiB GPU runs it too.
  EXPECT_EQ(choose_attention_path(training(true, 128, "", kL40Smem)).path, AttentionPath::Cudnn);
}

TEST(CudnnAttentionPath, WithoutCudnnTheTensorCoreKernelsRunAndSayWhy) {
  const AttentionPathChoice c = choose_attention_path(training(true, 64, "kvroute was built without cuDNN"));
  EXPECT_EQ(c.path, AttentionPath::Bf16Kernels);
  EXPECT_EQ(c.why,
            "attention at head_dim 64: bf16 tensor-core (WMMA) kernels (no cuDNN: kvroute was built without cuDNN)");
  // ... and where those do not fit either, the fp32 kernels, with both reasons.
  const AttentionPathChoice small = choose_attention_path(training(true, 128, "cudnnCreate failed: x", kL40Smem));
  EXPECT_EQ(small.path, AttentionPath::Fp32Kernels);
  EXPECT_NE(small.why.find("no cuDNN: cudnnCreate failed: x"), std::string::npos) << small.why;
  EXPECT_NE(small.why.find("attention runs in the fp32 kernels instead"), std::string::npos) << small.why;
}

TEST(CudnnAttentionPath, Fp32PrecisionOtherHeadDimsAndDecodeKeepTheKernels) {
  const AttentionPathChoice fp32 = choose_attention_path(training(false, 64));
  EXPECT_EQ(fp32.path, AttentionPath::Fp32Kernels);
  EXPECT_EQ(fp32.why, "attention at head_dim 64: fp32 kernels (train.precision is fp32)");

  const AttentionPathChoice hd96 = choose_attention_path(training(true, 96));
  EXPECT_EQ(hd96.path, AttentionPath::Fp32Kernels);
  EXPECT_NE(hd96.why.find("head_dim 64 and 128 only"), std::string::npos) << hd96.why;

  AttentionPathInputs decode = training(true, 64);
  decode.Tq = 1;
  decode.Tk = 300;
  decode.q_pos0 = 299;
  const AttentionPathChoice d = choose_attention_path(decode);
  EXPECT_EQ(d.path, AttentionPath::Bf16Kernels);
  EXPECT_NE(d.why.find("decode or a prefill chunk (Tq 1, Tk 300)"), std::string::npos) << d.why;

  AttentionPathInputs chunk = training(true, 128);
  chunk.q_pos0 = 0;
  chunk.Tk = 2048;  // Tq 1024 of 2048 keys
  EXPECT_EQ(choose_attention_path(chunk).path, AttentionPath::Bf16Kernels);
}

TEST(CudnnAttentionPath, NoPathOnAGpuWithoutEnoughSharedMemory) {
  const AttentionPathChoice c = choose_attention_path(training(false, 128, "", 48 * 1024));
  EXPECT_FALSE(c.error.empty());
  EXPECT_NE(c.error.find("needs an sm_80 or newer GPU"), std::string::npos) << c.error;
}

AttentionDims dims(int B, int T, int H, int Hkv, int D, long kv_seq_stride = 0, int Tk = 0) {
  AttentionShape s;
  s.B = B;
  s.Tq = T;
  s.Tk = Tk ? Tk : T;
  s.n_heads = H;
  s.n_kv_heads = Hkv;
  s.head_dim = D;
  s.scale = 1.f / std::sqrt(static_cast<float>(D));
  s.kv_seq_stride = kv_seq_stride;
  static const float dummy = 0.f;
  const float* layers[8] = {&dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy, &dummy};
  std::vector<int32_t> src(B, 0);
  return attention_dims(s, src.data(), layers, layers, "test");
}

TEST(CudnnSdpaKey, SameShapeSameGraphAndEveryFieldCounts) {
  const AttentionDims a = dims(16, 1024, 12, 4, 64);
  const CudnnSdpaKey f = CudnnSdpaKey::of(a, false, true);
  EXPECT_EQ(f, CudnnSdpaKey::of(a, false, false)) << "the forward has no deterministic variant";
  EXPECT_FALSE(f.deterministic);
  EXPECT_EQ(f.B, 16);
  EXPECT_EQ(f.T, 1024);
  EXPECT_EQ(f.H, 12);
  EXPECT_EQ(f.Hkv, 4);
  EXPECT_EQ(f.D, 64);
  EXPECT_EQ(f.scale(), 0.125f);

  std::map<CudnnSdpaKey, int> cache;
  cache[f] = 1;
  cache[CudnnSdpaKey::of(a, true, true)] = 2;
  cache[CudnnSdpaKey::of(a, true, false)] = 3;
  cache[CudnnSdpaKey::of(dims(8, 1024, 12, 4, 64), false, false)] = 4;
  cache[CudnnSdpaKey::of(dims(16, 1024, 12, 12, 64), false, false)] = 5;
  cache[CudnnSdpaKey::of(dims(16, 1024, 6, 2, 128), false, false)] = 6;
  cache[CudnnSdpaKey::of(dims(16, 512, 12, 4, 64), false, false)] = 7;
  EXPECT_EQ(cache.size(), 7u);
  EXPECT_EQ(cache.at(CudnnSdpaKey::of(dims(16, 1024, 12, 4, 64), false, false)), 1);

  CudnnSdpaKey other_scale = f;
  const float s = 0.1f;
  std::memcpy(&other_scale.scale_bits, &s, sizeof s);
  EXPECT_FALSE(other_scale == f);
  EXPECT_TRUE(other_scale < f || f < other_scale);
}

// Every element of cuDNN's [b, h, s, d] view lands where kvroute's index helpers put it.
TEST(CudnnLayout, StridesDescribeKvrouteLayouts) {
  const AttentionDims a = dims(3, 37, 12, 4, 64);
  const CudnnTensorLayout q = cudnn_bthd_layout(a.B, a.Tq, a.H, a.D);
  const CudnnTensorLayout kv = cudnn_bthd_layout(a.B, a.Tk, a.Hkv, a.D);
  const CudnnTensorLayout st = cudnn_stats_layout(a.B, a.H, a.Tq);
  EXPECT_EQ(std::vector<int64_t>(q.dim, q.dim + 4), (std::vector<int64_t>{3, 12, 37, 64}));
  EXPECT_EQ(std::vector<int64_t>(q.stride, q.stride + 4), (std::vector<int64_t>{37 * 768, 64, 768, 1}));
  EXPECT_EQ(std::vector<int64_t>(kv.dim, kv.dim + 4), (std::vector<int64_t>{3, 4, 37, 64}));
  EXPECT_EQ(std::vector<int64_t>(kv.stride, kv.stride + 4), (std::vector<int64_t>{37 * 256, 64, 256, 1}));
  EXPECT_EQ(std::vector<int64_t>(st.dim, st.dim + 4), (std::vector<int64_t>{3, 12, 37, 1}));
  auto at = [](const CudnnTensorLayout& l, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    return i0 * l.stride[0] + i1 * l.stride[1] + i2 * l.stride[2] + i3 * l.stride[3];
  };
  std::mt19937 rng(7);
  for (int n = 0; n < 1000; ++n) {
    const int b = rng() % a.B, t = rng() % a.Tq, h = rng() % a.H, d = rng() % a.D, kvh = h / a.group;
    EXPECT_EQ(at(q, b, h, t, d), static_cast<int64_t>(a.q_offset(b, t, h)) + d);
    EXPECT_EQ(at(kv, b, kvh, t, d),
              static_cast<int64_t>(a.kv_offset(b, kvh)) + static_cast<int64_t>(t) * a.kv_row + d);
    EXPECT_EQ(at(st, b, h, t, 0), static_cast<int64_t>(a.lse_offset(b, h, t)));
  }
  // The largest element offset is the last element of each tensor: they are dense.
  EXPECT_EQ(at(q, 2, 11, 36, 63) + 1, 3 * 37 * 768);
  EXPECT_EQ(at(kv, 2, 3, 36, 63) + 1, 3 * 37 * 256);
}

TEST(CudnnScratch, RegionsAreAlignedDisjointAndLargeEnough) {
  for (bool backward : {false, true}) {
    for (std::size_t ws : {std::size_t{0}, std::size_t{1}, std::size_t{1} << 20}) {
      const CudnnSdpaKey key = CudnnSdpaKey::of(dims(3, 37, 12, 4, 64), backward, true);
      const CudnnScratchLayout s = cudnn_scratch_layout(key, ws);
      const std::size_t q_bytes = 3 * 37 * 12 * 64 * 2, kv_bytes = 3 * 37 * 4 * 64 * 2;
      struct Region {
        std::size_t at, bytes;
      };
      std::vector<Region> regions{{s.q, q_bytes}, {s.k, kv_bytes}, {s.v, kv_bytes}, {s.o, q_bytes}};
      if (backward) {
        regions.insert(regions.end(), {{s.dout, q_bytes}, {s.dq, q_bytes}, {s.dk, kv_bytes}, {s.dv, kv_bytes}});
      } else {
        EXPECT_EQ(s.dout, s.workspace);  // the forward takes no gradient regions
        EXPECT_EQ(s.dv, s.workspace);
      }
      regions.push_back({s.workspace, ws});
      for (std::size_t i = 0; i < regions.size(); ++i) {
        EXPECT_EQ(regions[i].at % CudnnScratchLayout::kAlign, 0u) << i;
        if (i > 0) {
          EXPECT_GE(regions[i].at, regions[i - 1].at + regions[i - 1].bytes) << i;
        }
      }
      EXPECT_GE(s.total, s.workspace + ws);
      EXPECT_LT(s.total, s.workspace + ws + CudnnScratchLayout::kAlign);
    }
  }
}

TEST(CudnnKvSource, OneDenseSourceIsReadAsItIs) {
  const AttentionDims a = dims(4, 16, 4, 2, 8);
  const int32_t same[4] = {2, 2, 2, 2}, mixed[4] = {2, 0, 2, 1};
  const CudnnKvSource s = cudnn_kv_source(a, same);
  EXPECT_TRUE(s.contiguous);
  EXPECT_EQ(s.layer, 2);
  EXPECT_EQ(s.seq_elems, 16 * 2 * 8);
  EXPECT_FALSE(cudnn_kv_source(a, mixed).contiguous);
  // A KV-cache layout (room for 32 steps per sequence) is not one block even from one layer.
  EXPECT_FALSE(cudnn_kv_source(dims(4, 16, 4, 2, 8, 32 * 2 * 8), same).contiguous);
}

// The additions, applied on the host, equal the backend contract: dk_layers[src[b]] + b * kv_seq
// += that sequence's dK, for every b; each scratch element is added exactly once, in sequence order.
TEST(CudnnGradAdditions, MatchTheRoutedGradientContract) {
  struct Case {
    std::vector<int32_t> src;
    long kv_seq_stride;
  };
  const int T = 5, Hkv = 2, D = 4, L = 3;
  for (const Case& c : {Case{{1, 1, 1}, 0}, Case{{0, 2, 0}, 0}, Case{{2, 2, 2}, 9 * Hkv * D}, Case{{1, 0, 1}, 7 * Hkv * D}}) {
    const int B = static_cast<int>(c.src.size());
    const AttentionDims a = dims(B, T, 4, Hkv, D, c.kv_seq_stride);
    const long seq = static_cast<long>(T) * Hkv * D;
    std::vector<float> scratch(B * seq);
    for (std::size_t i = 0; i < scratch.size(); ++i) scratch[i] = static_cast<float>(i + 1);
    std::vector<std::vector<float>> grads(L, std::vector<float>(B * a.kv_seq, 0.f)), expect = grads;
    for (int b = 0; b < B; ++b)
      for (long r = 0; r < seq; ++r) expect[c.src[b]][b * a.kv_seq + r] += scratch[b * seq + r];

    const std::vector<CudnnGradAddition> adds = cudnn_grad_additions(a, c.src.data());
    const bool one_block = cudnn_kv_source(a, c.src.data()).contiguous;
    EXPECT_EQ(adds.size(), one_block ? 1u : static_cast<std::size_t>(B));
    std::vector<int> scratch_uses(scratch.size(), 0);
    long next_scratch = 0;
    for (const CudnnGradAddition& add : adds) {
      EXPECT_EQ(add.scratch_offset, next_scratch) << "additions run in sequence order";
      next_scratch += add.elements;
      for (long r = 0; r < add.elements; ++r) {
        grads[add.layer][add.dst_offset + r] += scratch[add.scratch_offset + r];
        ++scratch_uses[add.scratch_offset + r];
      }
    }
    EXPECT_EQ(grads, expect);
    EXPECT_TRUE(std::all_of(scratch_uses.begin(), scratch_uses.end(), [](int u) { return u == 1; }));
  }
}

#ifdef KVROUTE_WITH_CUDA

TEST(CudnnGraph, ValidatesForAnH100WithoutAGpu) {
  if (!cudnn_attention_built()) GTEST_SKIP() << "kvroute was built without cuDNN";
  for (int hd : {64, 128}) {
    // GPT-2 124M's shape at head_dim 64 (12 heads), GQA 12/4; d_model 2048 at head_dim 128.
    const AttentionDims a = hd == 64 ? dims(16, 1024, 12, 4, 64) : dims(16, 1024, 16, 4, 128);
    EXPECT_EQ(cudnn_validate_sdpa_graph(CudnnSdpaKey::of(a, false, false), 90, 132), "") << "forward, hd " << hd;
    EXPECT_EQ(cudnn_validate_sdpa_graph(CudnnSdpaKey::of(a, true, true), 90, 132), "")
        << "deterministic backward, hd " << hd;
    EXPECT_EQ(cudnn_validate_sdpa_graph(CudnnSdpaKey::of(a, true, false), 90, 132), "") << "backward, hd " << hd;
  }
  // ... and it does refuse what cuDNN cannot run: a head_dim that is not a multiple of 8.
  const std::string refused = cudnn_validate_sdpa_graph(CudnnSdpaKey::of(dims(2, 128, 4, 2, 20), false, false), 90, 132);
  EXPECT_NE(refused, "");
  std::cout << "head_dim 20: " << refused << "\n";
}

TEST(CudnnGraph, CreateSaysWhyWhereCudnnCannotStart) {
  std::string why;
  auto cudnn = CudnnAttention::create(nullptr, &why);
  if (cudnn) GTEST_SKIP() << "cuDNN started (a GPU is present): the GPU tests cover this path";
  EXPECT_FALSE(why.empty());
  std::cout << "cuDNN attention unavailable here: " << why << "\n";
}

#endif  // KVROUTE_WITH_CUDA

}  // namespace
}  // namespace kvroute
