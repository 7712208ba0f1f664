// train.precision / train.deterministic: the config keys and how make_backend treats them
// on a machine without a GPU (the CUDA side is covered by tests/test_cuda_ops.cpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "kvroute/backend.h"
#include "kvroute/config.h"

namespace kvroute {
namespace {

using ::testing::HasSubstr;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

TEST(BackendOptions, ConfigDefaultsAndOverrides) {
  const Config d = load_config({}, {});
  EXPECT_EQ(d.train.precision, "fp32");
  EXPECT_TRUE(d.train.deterministic);
  const Config c = load_config({}, {"train.precision=bf16", "train.deterministic=false"});
  EXPECT_EQ(c.train.precision, "bf16");
  EXPECT_FALSE(c.train.deterministic);
  const std::string yaml = to_yaml(c);
  EXPECT_THAT(yaml, HasSubstr("precision: bf16"));
  EXPECT_THAT(yaml, HasSubstr("deterministic: false"));
}

TEST(BackendOptions, ConfigRefusesUnknownValues) {
  EXPECT_THAT(error_of([] { load_config({}, {"train.precision=fp16"}); }), HasSubstr("train.precision"));
  EXPECT_THAT(error_of([] { load_config({}, {"train.deterministic=maybe"}); }), HasSubstr("train.deterministic"));
}

TEST(BackendOptions, CpuBackendTakesBf16AndAutoAndRefusesUnknownPrecisions) {
  // bf16 and auto themselves are tested in test_bf16_cpu.cpp.
  EXPECT_THAT(make_backend("cpu", BackendOptions{"bf16", true})->peak_gemm_label(), HasSubstr("bf16"));
  EXPECT_NO_THROW(make_backend("cpu", BackendOptions{"auto", true}));
  EXPECT_THAT(error_of([] { load_config({}, {"train.precision=fp8"}); }), HasSubstr("fp32|bf16|auto"));
  EXPECT_THAT(error_of([] { make_backend("cpu", BackendOptions{"fp16", true}); }),
              HasSubstr("unknown precision 'fp16'"));
}

TEST(BackendOptions, CpuBackendAcceptsFp32EitherDeterminism) {
  for (bool det : {true, false}) {
    auto be = make_backend("cpu", BackendOptions{"fp32", det});
    EXPECT_EQ(be->name(), "cpu");
    const BackendMemory m = be->memory();
    EXPECT_EQ(m.device_total_bytes, 0u) << "the CPU backend has no device memory to report";
    EXPECT_EQ(be->peak_gemm_flops(64), 0.0) << "the CPU backend leaves the peak to bench train's sgemm";
    EXPECT_EQ(be->peak_gemm_label(), "sgemm");
  }
}

TEST(BackendOptions, CudaWithoutDeviceSaysWhy) {
  if (cuda_available()) GTEST_SKIP() << "a CUDA device is present: covered by test_cuda_ops";
  const std::string e = error_of([] { make_backend("cuda", BackendOptions{"bf16", true}); });
  EXPECT_TRUE(e.find("built without CUDA") != std::string::npos || e.find("no CUDA device") != std::string::npos)
      << e;
}

}  // namespace
}  // namespace kvroute
