// CPU tests of the host/device helpers the CUDA backend's bf16 path runs on the GPU:
// the float -> bf16 rounding of every matmul operand (kvroute/bf16.h, used by
// cuda/bf16_cuda.cu) and the row-major -> column-major GEMM mapping and alignment
// hint given to cuBLAS(Lt), and the split-K reduction schemes train.deterministic allows
// (cuda/gemm_layout.h, used by cuda/matmul_cuda.cu), and which attention kernels run for a
// device's shared-memory limit and head_dim (cuda/attention_plan.h, cuda/attention_cuda.cu).
// References are written differently: rounding by comparing distances to the two
// neighbouring bf16 values in double; the GEMM by a plain triple loop.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "../cuda/attention_plan.h"
#include "../cuda/gemm_layout.h"
#include "kvroute/bf16.h"

namespace kvroute {
namespace {

bool is_nan_bits(uint16_t h) { return (h & 0x7fffu) > 0x7f80u; }

// The bf16 value of x, rounded to nearest with ties to even, found by comparing x with
// the two bf16 values around it (both exact in double).
uint16_t reference_bf16(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);  // truncation: toward zero
  if ((u & 0xffffu) == 0) return lo;                    // exactly representable (incl. +-0, +-inf)
  const uint16_t hi = static_cast<uint16_t>(lo + 1);    // next value away from zero
  const double ax = std::fabs(static_cast<double>(x));
  const double lo_mag = std::fabs(static_cast<double>(float_from_bf16(lo)));
  // The value after the largest finite bf16 is 2^128 (bit pattern of inf).
  const double hi_mag = (hi & 0x7fffu) == 0x7f80u ? std::ldexp(1.0, 128)
                                                  : std::fabs(static_cast<double>(float_from_bf16(hi)));
  const double d_lo = ax - lo_mag, d_hi = hi_mag - ax;
  if (d_lo < d_hi) return lo;
  if (d_hi < d_lo) return hi;
  return (lo & 1u) == 0 ? lo : hi;
}

TEST(Bf16Math, EveryBf16ValueRoundTrips) {
  for (uint32_t h = 0; h <= 0xffffu; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const uint16_t back = bf16_from_float(float_from_bf16(bits));
    if (is_nan_bits(bits)) {
      EXPECT_TRUE(is_nan_bits(back)) << std::hex << h;
      EXPECT_EQ(back & 0x8000u, bits & 0x8000u) << "NaN sign lost for " << std::hex << h;
    } else {
      ASSERT_EQ(back, bits) << "bf16 0x" << std::hex << h << " did not survive float and back";
    }
  }
}

TEST(Bf16Math, RoundsToNearestEvenLikeTheReference) {
  // Every 251st float bit pattern (17 million values: every exponent, both signs,
  // subnormals, values next to ties), plus random finite floats.
  long checked = 0;
  for (uint64_t u = 0; u <= 0xffffffffull; u += 251) {
    const float x = float_from_bits(static_cast<uint32_t>(u));
    if (std::isnan(x)) continue;
    ASSERT_EQ(bf16_from_float(x), reference_bf16(x)) << "float bits 0x" << std::hex << u;
    ++checked;
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1000.f, 1000.f);
  for (int i = 0; i < 200000; ++i) {
    const float x = dist(rng);
    ASSERT_EQ(bf16_from_float(x), reference_bf16(x)) << x;
  }
  EXPECT_GT(checked, 16000000);
}

TEST(Bf16Math, TiesAndEdgeCases) {
  auto bf = [](uint32_t float_bits_value) { return bf16_from_float(float_from_bits(float_bits_value)); };
  EXPECT_EQ(bf(0x3f808000u), 0x3f80u);  // 1 + 2^-8: halfway, 0x3f80 is even: down
  EXPECT_EQ(bf(0x3f818000u), 0x3f82u);  // halfway between 0x3f81 and 0x3f82: up to even
  EXPECT_EQ(bf(0x3f808001u), 0x3f81u);  // just above halfway: up
  EXPECT_EQ(bf(0x3f807fffu), 0x3f80u);  // just below halfway: down
  EXPECT_EQ(bf(0xbf818000u), 0xbf82u);  // negative: ties to even in magnitude
  EXPECT_EQ(bf(0x7f7fffffu), 0x7f80u);  // largest float rounds to +inf
  EXPECT_EQ(bf(0x7f7f7fffu), 0x7f7fu);  // ...but just below half an ulp above the largest bf16 does not
  EXPECT_EQ(bf(0xff7fffffu), 0xff80u);  // -inf
  EXPECT_EQ(bf(0x7f800000u), 0x7f80u);  // +inf stays
  EXPECT_EQ(bf(0xff800000u), 0xff80u);
  EXPECT_EQ(bf(0x00000000u), 0x0000u);  // +0
  EXPECT_EQ(bf(0x80000000u), 0x8000u);  // -0 keeps its sign
  EXPECT_EQ(bf(0x00000001u), 0x0000u);  // smallest subnormal rounds to zero
  EXPECT_EQ(bf(0x00008000u), 0x0000u);  // subnormal tie: to even (zero)
  EXPECT_EQ(bf(0x00018000u), 0x0002u);  // subnormal tie: to even (up)
  EXPECT_EQ(bf(0x007fffffu), 0x0080u);  // largest subnormal rounds up to the smallest normal
  // NaN: stays NaN (quiet), sign kept, even when its payload sits only in the low bits.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    const uint16_t h = bf(nan);
    EXPECT_TRUE(is_nan_bits(h)) << std::hex << nan;
    EXPECT_TRUE(h & 0x0040u) << "NaN not quiet for " << std::hex << nan;
    EXPECT_EQ(h & 0x8000u, (nan >> 16) & 0x8000u) << std::hex << nan;
  }
  // Relative error of rounding is at most 2^-9 for normal values.
  for (float x : {1.f, 3.14159265f, -2.718281828f, 1e-30f, 6.5e4f, 1e30f}) {
    const float r = float_from_bf16(bf16_from_float(x));
    EXPECT_LE(std::fabs(r - x), std::ldexp(std::fabs(x), -9)) << x;
  }
}

// Row-major C[M,N] = op(A) op(B) the obvious way.
std::vector<double> row_major_product(const std::vector<double>& A, const std::vector<double>& B, int M, int N,
                                      int K, bool ta, bool tb) {
  std::vector<double> C(static_cast<std::size_t>(M) * N, 0.0);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) {
        const double a = ta ? A[static_cast<std::size_t>(k) * M + i] : A[static_cast<std::size_t>(i) * K + k];
        const double b = tb ? B[static_cast<std::size_t>(j) * K + k] : B[static_cast<std::size_t>(k) * N + j];
        s += a * b;
      }
      C[static_cast<std::size_t>(i) * N + j] = s;
    }
  return C;
}

// Element (r, c) of op(x) for a column-major operand as cuBLAS reads it.
double col_major_element(const std::vector<double>& x, const ColMajorOperand& d, int r, int c) {
  const int row = d.transpose ? c : r, col = d.transpose ? r : c;
  EXPECT_LT(row, d.rows);
  EXPECT_LT(col, d.cols);
  return x[static_cast<std::size_t>(col) * d.ld + row];
}

TEST(GemmLayout, ColumnMajorMappingComputesTheRowMajorProduct) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-4, 4);
  const int shapes[][3] = {{3, 5, 7}, {1, 4, 2}, {6, 1, 3}, {4, 4, 1}, {8, 3, 5}};
  for (const auto& s : shapes) {
    const int M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        std::vector<double> A(static_cast<std::size_t>(M) * K), B(static_cast<std::size_t>(K) * N);
        for (auto& v : A) v = small(rng);
        for (auto& v : B) v = small(rng);
        const ColMajorGemm g = col_major_gemm_for_row_major(M, N, K, ta, tb);
        ASSERT_EQ(g.m, N);
        ASSERT_EQ(g.n, M);
        ASSERT_EQ(g.k, K);
        // Leading dimensions cover the stored arrays exactly (dense, as matmul's contract says).
        EXPECT_EQ(static_cast<std::size_t>(g.a.ld) * g.a.cols, B.size());
        EXPECT_EQ(static_cast<std::size_t>(g.b.ld) * g.b.cols, A.size());
        EXPECT_GE(g.a.ld, 1);
        EXPECT_GE(g.b.ld, 1);
        // D = op(a) op(b), column-major with ldc, where a is the stored B and b the stored A.
        std::vector<double> D(static_cast<std::size_t>(g.ldc) * g.n, 0.0);
        for (int i = 0; i < g.m; ++i)
          for (int j = 0; j < g.n; ++j) {
            double acc = 0;
            for (int k = 0; k < g.k; ++k) acc += col_major_element(B, g.a, i, k) * col_major_element(A, g.b, k, j);
            D[static_cast<std::size_t>(j) * g.ldc + i] = acc;
          }
        // Column-major D [N, M] with ldc N is, byte for byte, row-major C [M, N].
        EXPECT_EQ(D, row_major_product(A, B, M, N, K, ta, tb))
            << "M=" << M << " N=" << N << " K=" << K << " trans_a=" << ta << " trans_b=" << tb;
      }
  }
}

TEST(GemmLayout, PointerAlignment) {
  EXPECT_EQ(pointer_alignment(0), 256);
  EXPECT_EQ(pointer_alignment(256 * 7), 256);
  EXPECT_EQ(pointer_alignment(4096 + 128), 128);
  EXPECT_EQ(pointer_alignment(4096 + 4), 4);
  EXPECT_EQ(pointer_alignment(4096 + 2), 2);
  EXPECT_EQ(pointer_alignment(4097), 1);
  EXPECT_EQ(pointer_alignment(1024 + 48), 16);
}

// train.deterministic allows only algorithms without a split-K reduction; otherwise any.
TEST(GemmLayout, ReductionSchemeMaskFollowsDeterminism) {
  const uint32_t det = lt_reduction_scheme_mask(true), any = lt_reduction_scheme_mask(false);
  EXPECT_EQ(det, 0u);     // CUBLASLT_REDUCTION_SCHEME_NONE
  EXPECT_EQ(any, 0x7u);   // CUBLASLT_REDUCTION_SCHEME_MASK: INPLACE | COMPUTE_TYPE | OUTPUT_TYPE
  // A plan that sums in one sequence fits both masks.
  EXPECT_TRUE(lt_reduction_scheme_allowed(0, det));
  EXPECT_TRUE(lt_reduction_scheme_allowed(0, any));
  // Every split-K reduction (in place 1, compute type 2, output type 4) is refused when
  // deterministic and accepted otherwise; unknown bits never are.
  for (uint32_t scheme : {1u, 2u, 4u}) {
    EXPECT_FALSE(lt_reduction_scheme_allowed(scheme, det)) << scheme;
    EXPECT_TRUE(lt_reduction_scheme_allowed(scheme, any)) << scheme;
  }
  EXPECT_FALSE(lt_reduction_scheme_allowed(2, 1));  // not in a narrower mask
  EXPECT_FALSE(lt_reduction_scheme_allowed(8, any));
}

}  // namespace
}  // namespace kvroute

namespace kvroute {
namespace {

// Shared memory per block that cudaDevAttrMaxSharedMemoryPerBlockOptin reports (CUDA
// programming guide, compute capabilities table): 163 KiB on sm_80, 99 KiB on sm_86/sm_89,
// 227 KiB on sm_90.
constexpr std::size_t kSm80Smem = 163 * 1024, kSm86Smem = 99 * 1024, kSm90Smem = 227 * 1024;

TEST(AttentionPlan, SharedMemoryOfEachKernel) {
  // Tensor-core forward at D = 128: Q, K, V bf16 64 x 136 (17408 bytes each), scores fp32
  // 64 x 68 (17408), probabilities bf16 64 x 72 (9216), output fp32 64 x 132 (33792).
  EXPECT_EQ(attention_bf16_forward_smem_bytes(128), 3u * 17408 + 17408 + 9216 + 33792);  // 110 KiB
  // D = 64: 64 x 72 bf16 = 9216; output 64 x 68 fp32 = 17408.
  EXPECT_EQ(attention_bf16_forward_smem_bytes(64), 3u * 9216 + 17408 + 9216 + 17408);
  // Backward: four bf16 tiles, two fp32 score tiles, two bf16 tiles, 512 bytes of lse/delta.
  EXPECT_EQ(attention_bf16_backward_smem_bytes(128), 4u * 17408 + 2 * 17408 + 2 * 9216 + 512);  // 120.5 KiB
  EXPECT_EQ(attention_bf16_backward_smem_bytes(64), 4u * 9216 + 2 * 17408 + 2 * 9216 + 512);
  // fp32 kernels: the dK/dV kernel is the largest, 4 rows-of-32 tiles of DM + 1 floats, two
  // 32 x 33 tiles and 64 floats.
  EXPECT_EQ(attention_fp32_smem_bytes(128), 4u * (4 * 32 * 129 + 2 * 32 * 33 + 64));
  EXPECT_EQ(attention_fp32_smem_bytes(100), attention_fp32_smem_bytes(128));  // instance 128
  EXPECT_EQ(attention_fp32_smem_bytes(48), 4u * (4 * 32 * 65 + 2 * 32 * 33 + 64));
  EXPECT_EQ(attention_fp32_smem_bytes(16), 4u * (4 * 32 * 33 + 2 * 32 * 33 + 64));
  EXPECT_GT(attention_fp32_dkdv_smem_bytes(128), attention_fp32_dq_smem_bytes(128));
  EXPECT_GT(attention_fp32_dq_smem_bytes(128), attention_fp32_forward_smem_bytes(128));
}

TEST(AttentionPlan, TensorCoresWhereTheyFitElseFp32WithAMessage) {
  for (std::size_t limit : {kSm80Smem, kSm90Smem})
    for (int d : {64, 128}) {
      const AttentionKernelChoice c = choose_attention_kernel(true, d, limit);
      EXPECT_TRUE(c.tensor_cores) << "head_dim " << d << " limit " << limit;
      EXPECT_TRUE(c.fallback.empty());
      EXPECT_TRUE(c.error.empty());
    }
  // sm_86/sm_89: head_dim 64 fits (70 and 88.5 KiB), 128 does not (110 and 120.5 KiB).
  EXPECT_TRUE(choose_attention_kernel(true, 64, kSm86Smem).tensor_cores);
  const AttentionKernelChoice c = choose_attention_kernel(true, 128, kSm86Smem);
  EXPECT_FALSE(c.tensor_cores);
  EXPECT_TRUE(c.error.empty());
  EXPECT_NE(c.fallback.find("head_dim 128"), std::string::npos) << c.fallback;
  EXPECT_NE(c.fallback.find("fp32 kernels"), std::string::npos) << c.fallback;
  EXPECT_NE(c.fallback.find(std::to_string(kSm86Smem)), std::string::npos) << c.fallback;
  // One byte short of either direction is enough to fall back (both directions run the same kind).
  const std::size_t fwd = attention_bf16_forward_smem_bytes(128), bwd = attention_bf16_backward_smem_bytes(128);
  EXPECT_TRUE(choose_attention_kernel(true, 128, bwd).tensor_cores);
  EXPECT_FALSE(choose_attention_kernel(true, 128, bwd - 1).tensor_cores);
  EXPECT_FALSE(choose_attention_kernel(true, 128, fwd - 1).tensor_cores);
}

TEST(AttentionPlan, Fp32PrecisionAndOtherHeadDimsNeverFallBack) {
  for (int d : {16, 48, 64, 100, 128}) {
    const AttentionKernelChoice fp32 = choose_attention_kernel(false, d, kSm86Smem);
    EXPECT_FALSE(fp32.tensor_cores) << d;
    EXPECT_TRUE(fp32.fallback.empty()) << d;  // nothing to say: fp32 was asked for
    EXPECT_TRUE(fp32.error.empty()) << d;
  }
  for (int d : {32, 48, 96}) {  // bf16 precision, no tensor-core kernel at this head_dim
    const AttentionKernelChoice c = choose_attention_kernel(true, d, kSm90Smem);
    EXPECT_FALSE(c.tensor_cores) << d;
    EXPECT_TRUE(c.fallback.empty()) << d;
  }
}

TEST(AttentionPlan, AGpuWithoutRoomForTheFp32KernelsIsAnError) {
  // 48 KiB (pre-sm_70 GPUs): the fp32 kernels fit up to head_dim 64, not at 128 (73 KiB).
  constexpr std::size_t k48 = 48 * 1024;
  EXPECT_TRUE(choose_attention_kernel(false, 64, k48).error.empty());
  const AttentionKernelChoice c = choose_attention_kernel(true, 128, k48);
  EXPECT_FALSE(c.tensor_cores);
  EXPECT_NE(c.error.find("sm_80"), std::string::npos) << c.error;
}

}  // namespace
}  // namespace kvroute
