// safetensors files (include/kvroute/safetensors.h): write then read is bit-exact in F32 and
// rounds to nearest even in BF16; F16 widens exactly; every kind of damage is refused naming the
// file and the tensor before anything is read; the shard index names each tensor's file.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "data_fixtures.h"
#include "kvroute/bf16.h"
#include "kvroute/safetensors.h"

namespace kvroute {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_data::fresh_temp_dir;
using testing_data::random_floats;
using testing_data::read_file_bytes;
using testing_data::write_file_bytes;

// A file from a raw JSON header and data bytes, as another writer (or a damaged file) has it.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string error_opening(const fs::path& p) {
  try {
    SafetensorsFile f(p.string());
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(opened)";
}

TEST(Safetensors, WriteThenReadIsBitExactInF32AndRoundsToNearestEvenInBf16) {
  const fs::path dir = fresh_temp_dir("safetensors_rw");
  const auto a = random_floats(6 * 5, 1), b = random_floats(7, 2);
  const std::vector<NamedTensor> ts = {{"model.layers.0.w", {6, 5}, a.data()}, {"norm", {7}, b.data()}};
  write_safetensors((dir / "f32.safetensors").string(), ts, "F32", {{"format", "pt"}});
  write_safetensors((dir / "bf16.safetensors").string(), ts, "BF16");
  const SafetensorsFile f32((dir / "f32.safetensors").string());
  ASSERT_EQ(f32.tensors().size(), 2u);
  EXPECT_EQ(f32.tensors()[0].name, "model.layers.0.w");
  EXPECT_EQ(f32.find("model.layers.0.w")->shape, (std::vector<int64_t>{6, 5}));
  EXPECT_EQ(f32.metadata().at("format"), "pt");
  EXPECT_EQ(f32.read_f32("model.layers.0.w"), a);
  EXPECT_EQ(f32.read_f32("norm"), b);
  const SafetensorsFile h((dir / "bf16.safetensors").string());
  EXPECT_EQ(h.find("norm")->dtype, "BF16");
  const auto hb = h.read_f32("norm");
  for (std::size_t i = 0; i < b.size(); ++i) EXPECT_EQ(hb[i], float_from_bf16(bf16_from_float(b[i])));
  EXPECT_THAT(read_file_bytes(dir / "f32.safetensors").substr(8, 2), "{\"");
  EXPECT_FALSE(fs::exists(dir / "f32.safetensors.tmp"));
  EXPECT_THROW(write_safetensors((dir / "x").string(), ts, "F16"), std::invalid_argument);
  fs::remove_all(dir);
}

TEST(Safetensors, F16WidensExactlyIncludingSubnormalsInfinityAndNan) {
  EXPECT_EQ(float_from_f16(0x3c00), 1.0f);
  EXPECT_EQ(float_from_f16(0xc000), -2.0f);
  EXPECT_EQ(float_from_f16(0x7bff), 65504.0f);
  EXPECT_EQ(float_from_f16(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(float_from_f16(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(float_from_f16(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::signbit(float_from_f16(0x8000)));
  EXPECT_EQ(float_from_f16(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(float_from_f16(0x7e00)));
  // Through a file written by hand, as another writer would.
  const fs::path dir = fresh_temp_dir("safetensors_f16");
  const uint16_t halves[3] = {0x3c00, 0x3800, 0xbc00};
  std::string data(reinterpret_cast<const char*>(halves), 6);
  write_file_bytes(dir / "h.safetensors",
                   raw_file(R"({"x":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}})", data));
  EXPECT_EQ(SafetensorsFile((dir / "h.safetensors").string()).read_f32("x"), (std::vector<float>{1.f, 0.5f, -1.f}));
  fs::remove_all(dir);
}

TEST(Safetensors, DamagedFilesAreRefusedNamingTheFileAndTheProblem) {
  const fs::path dir = fresh_temp_dir("safetensors_bad");
  const std::string good_header = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  const std::string data(16, '\0');
  auto refused = [&](const std::string& name, const std::string& bytes) {
    write_file_bytes(dir / name, bytes);
    return error_opening(dir / name);
  };
  EXPECT_EQ(refused("good", raw_file(good_header, data)), "(opened)");
  const std::string whole = raw_file(good_header, data);
  EXPECT_THAT(refused("tiny", "abc"), HasSubstr("truncated"));
  EXPECT_THAT(refused("cut_header", whole.substr(0, 20)), HasSubstr("truncated: the header says"));
  EXPECT_THAT(refused("cut_data", whole.substr(0, whole.size() - 4)), HasSubstr("lie outside the 12 data bytes"));
  EXPECT_THAT(refused("not_json", raw_file("{not json", data)), HasSubstr("not valid JSON"));
  EXPECT_THAT(refused("lying_size", raw_file(R"({"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}})", data)),
              HasSubstr("tensor 'w': 16 bytes for F32 [3,2], which takes 24"));
  EXPECT_THAT(refused("overlap", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                          data)),
              HasSubstr("overlap"));
  EXPECT_THAT(refused("dtype", raw_file(R"({"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})", data)),
              HasSubstr("unknown dtype 'Q4'"));
  EXPECT_THAT(refused("huge", raw_file(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})", data)),
              HasSubstr("larger than the file"));
  EXPECT_THAT(refused("no_offsets", raw_file(R"({"w":{"dtype":"F32","shape":[4]}})", data)),
              HasSubstr("needs dtype, shape and data_offsets"));
  std::string huge_len = whole;
  huge_len[7] = 0x10;
  EXPECT_THAT(refused("huge_len", huge_len), HasSubstr("over the format's limit of 100000000"));
  EXPECT_THAT(error_opening(dir / "missing"), HasSubstr("No such file"));
  // A valid file, but a tensor it lacks or of a dtype kvroute does not read.
  write_file_bytes(dir / "i8", raw_file(R"({"q":{"dtype":"I8","shape":[16],"data_offsets":[0,16]}})", data));
  const SafetensorsFile i8((dir / "i8").string());
  try {
    i8.read_f32("q");
    FAIL() << "I8 read as weights";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("tensor 'q' is I8"));
    EXPECT_THAT(e.what(), HasSubstr((dir / "i8").string()));
  }
  EXPECT_THROW(i8.read_f32("absent"), std::runtime_error);
  fs::remove_all(dir);
}

TEST(Safetensors, TheShardIndexNamesEachTensorsFileAndRefusesMissingShards) {
  const fs::path dir = fresh_temp_dir("safetensors_index");
  const auto a = random_floats(4, 3);
  write_safetensors((dir / "model-00001-of-00002.safetensors").string(), {{"a", {4}, a.data()}}, "F32");
  write_safetensors((dir / "model-00002-of-00002.safetensors").string(), {{"b", {4}, a.data()}}, "F32");
  write_file_bytes(dir / "model.safetensors.index.json",
                   R"({"metadata": {"total_size": 32}, "weight_map": {"a": "model-00001-of-00002.safetensors",)"
                   R"( "b": "model-00002-of-00002.safetensors"}})");
  const auto map = read_safetensors_index((dir / "model.safetensors.index.json").string());
  ASSERT_EQ(map.size(), 2u);
  EXPECT_EQ(map.at("b"), (dir / "model-00002-of-00002.safetensors").string());
  EXPECT_EQ(SafetensorsFile(map.at("b")).read_f32("b"), a);
  write_file_bytes(dir / "bad.index.json", R"({"weight_map": {"c": "model-00003-of-00003.safetensors"}})");
  try {
    read_safetensors_index((dir / "bad.index.json").string());
    FAIL() << "a missing shard was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("puts 'c' in"));
    EXPECT_THAT(e.what(), HasSubstr("does not exist"));
  }
  write_file_bytes(dir / "nomap.index.json", R"({"metadata": {}})");
  EXPECT_THROW(read_safetensors_index((dir / "nomap.index.json").string()), std::runtime_error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvroute
