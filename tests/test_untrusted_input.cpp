// Files from elsewhere (input_file.h, input_limits.h): every case of the adversarial campaign of
// issue 31 against the readers of Hugging Face folders, tokenizers and safetensors ends in a
// clear error naming the file, never a crash, a hang or gigabytes of memory: deep JSON, long
// pre-tokenizer sequences, huge shapes and ids, FIFOs and devices, files truncated while read,
// duplicate keys, integers past 2^31, index paths leading out of the folder; and zero-size
// tensors at a boundary, as Hugging Face writes them, are read.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <future>

#include "data_fixtures.h"
#include "error_of.h"
#include "kvroute/hf_model.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"
#include "kvroute/safetensors.h"
#include "kvroute/tokenizer.h"

namespace kvroute {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
using namespace testing_data;
using testing_errors::error_of;

const fs::path kSource = fs::path(KVROUTE_SOURCE_DIR) / "tests" / "fixtures";

// Runs f on another thread and fails the test (instead of hanging it) if it takes over 10 s.
template <class F>
std::string error_within_seconds(F&& f) {
  auto result = std::async(std::launch::async, [&] { return error_of(f); });
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "did not return within 10 s";
    std::_Exit(1);  // the thread is blocked for good; end the process rather than hang ctest
  }
  return result.get();
}

fs::path copy_model(const std::string& name, const fs::path& tmp) {
  const fs::path dst = tmp / name;
  fs::remove_all(dst);
  fs::copy(kSource / "hf_models" / name, dst, fs::copy_options::recursive);
  return dst;
}

std::string nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// config.json of the llama2 fixture with `key` set to the raw JSON `value`.
void set_config_key(const fs::path& dir, const std::string& key, const std::string& value) {
  json j = json::parse(read_file_bytes(dir / "config.json"));
  j.erase(key);
  std::string text = j.dump();
  text.insert(text.size() - 1, ",\"" + key + "\":" + value);
  write_file_bytes(dir / "config.json", text);
}

TEST(UntrustedInput, JsonDepthAndDuplicateKeysAreRefused) {
  EXPECT_THAT(error_of([] { parse_input_json(nested(100000), "f"); }),
              AllOf(HasSubstr("f: nested deeper than 128 levels")));
  EXPECT_EQ(parse_input_json(nested(limits::kJsonDepth), "f").size(), 1u);
  EXPECT_THAT(error_of([] { parse_input_json(nested(limits::kJsonDepth + 1), "f"); }), HasSubstr("deeper than"));
  EXPECT_THAT(error_of([] { parse_input_json(R"({"a": 1, "b": {"a": 2, "a": 3}})", "f"); }),
              HasSubstr("key 'a' appears twice in one object"));
  EXPECT_EQ(parse_input_json(R"({"a": 1, "b": {"a": 2}, "c": [{"a": 1}, {"a": 2}]})", "f")["b"]["a"], 2);
  EXPECT_THAT(error_of([] { parse_input_json("{not json", "f"); }), HasSubstr("f: not valid JSON"));
  // Messages describe big or deep values rather than printing them.
  EXPECT_EQ(json_for_message(json::parse(nested(50))), "a list of 1 entries");
  EXPECT_EQ(json_for_message(json(7)), "7");
}

TEST(UntrustedInput, OnlyRegularFilesAreReadAndNeverUntilEof) {
  const fs::path tmp = fresh_temp_dir("untrusted_files");
  const fs::path fifo = tmp / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THAT(error_within_seconds([&] { read_input_file(fifo.string(), 1000, "config 'fifo'"); }),
              HasSubstr("config 'fifo': is a FIFO, not a regular file"));
  fs::create_symlink("/dev/zero", tmp / "zero");
  EXPECT_THAT(error_within_seconds([&] { read_input_file((tmp / "zero").string(), 1000, "z"); }),
              HasSubstr("z: is a character device, not a regular file"));
  EXPECT_THAT(error_of([&] { read_input_file(tmp.string(), 1000, "d"); }), HasSubstr("is a directory"));
  write_file_bytes(tmp / "big", std::string(2000, 'x'));
  EXPECT_THAT(error_of([&] { read_input_file((tmp / "big").string(), 1000, "b"); }),
              HasSubstr("b: is 2000 bytes, over kvroute's limit"));
  EXPECT_EQ(read_input_file((tmp / "big").string(), 2000, "b").size(), 2000u);
  EXPECT_THAT(error_of([&] { read_input_file((tmp / "none").string(), 1000, "n"); }), HasSubstr("No such file"));
}

TEST(UntrustedInput, FifosInAModelFolderAreRefusedWithoutBlocking) {
  const fs::path tmp = fresh_temp_dir("untrusted_fifo_model");
  const std::pair<const char*, const char*> cases[] = {{"llama2", "config.json"},
                                                       {"llama2", "model.safetensors"},
                                                       {"llama2", "tokenizer.json"},
                                                       {"llama3", "model.safetensors.index.json"},
                                                       {"llama3", "model-00002-of-00003.safetensors"}};
  for (const auto& [model, name] : cases) {
    SCOPED_TRACE(name);
    const fs::path dir = copy_model(model, tmp);
    fs::remove(dir / name);
    ASSERT_EQ(::mkfifo((dir / name).c_str(), 0600), 0);
    const std::string err = error_within_seconds([&] {
      HfImportOptions o;
      o.dir = dir.string();
      o.out = (tmp / "out.h5").string();
      o.force = true;
      import_hf(o);
    });
    EXPECT_THAT(err, AllOf(HasSubstr(name), HasSubstr("is a FIFO, not a regular file")));
  }
  // A tokenizer directory whose tokenizer.model is a FIFO (data encode --tokenizer DIR).
  const fs::path sp = tmp / "sp";
  fs::create_directories(sp);
  ASSERT_EQ(::mkfifo((sp / "tokenizer.model").c_str(), 0600), 0);
  EXPECT_THAT(error_within_seconds([&] { load_tokenizer(sp.string()); }), HasSubstr("is a FIFO"));
}

TEST(UntrustedInput, ConfigJsonShapesAndIntegersAreCheckedBeforeAnythingIsSized) {
  const fs::path tmp = fresh_temp_dir("untrusted_config");
  const fs::path dir = copy_model("llama2", tmp);
  const std::string original = read_file_bytes(dir / "config.json");
  auto error_with = [&](const std::string& key, const std::string& value) {
    write_file_bytes(dir / "config.json", original);
    set_config_key(dir, key, value);
    return error_of([&] { read_hf_config(dir.string()); });
  };
  EXPECT_THAT(error_with("vocab_size", nested(100000)), HasSubstr("nested deeper than 128 levels"));
  EXPECT_THAT(error_with("layer_types", nested(100000)), HasSubstr("nested deeper than 128 levels"));
  EXPECT_THAT(error_with("num_hidden_layers", "1000000"),
              AllOf(HasSubstr("config.json"), HasSubstr("num_hidden_layers: 1000000 is over kvroute's limit of 1024")));
  EXPECT_THAT(error_with("num_hidden_layers", "4294967298"), HasSubstr("num_hidden_layers: 4294967298 is over"));
  EXPECT_THAT(error_with("hidden_size", "18446744073709551615"), HasSubstr("hidden_size: 18446744073709551615 is over"));
  EXPECT_THAT(error_with("vocab_size", "2147483648"), HasSubstr("vocab_size: 2147483648 is over"));
  EXPECT_THAT(error_with("head_dim", "-16"), HasSubstr("head_dim: -16 is below 1"));
  EXPECT_THAT(error_with("num_hidden_layers", "2.5"), HasSubstr("num_hidden_layers: expected an integer, got 2.5"));
  EXPECT_THAT(error_with("eos_token_id", "4294967298"), HasSubstr("eos_token_id: 4294967298 is not a token id"));
  EXPECT_THAT(error_with("rope_parameters", R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64.7})"),
              HasSubstr("original_max_position_embeddings: expected a whole number"));
  write_file_bytes(dir / "config.json", original);
  EXPECT_EQ(read_hf_config(dir.string()).model.n_layers, 2);
  // Training from the folder names config.json, not a later config key.
  write_file_bytes(dir / "config.json", original);
  set_config_key(dir, "num_hidden_layers", "1000000000");
  Config cfg;
  cfg.model.init_from = dir.string();
  std::vector<std::string> notes;
  EXPECT_THAT(error_of([&] { adopt_hf_model_config(cfg, notes); }), HasSubstr("config.json"));
}

TEST(UntrustedInput, TokenizerJsonLimits) {
  const fs::path tmp = fresh_temp_dir("untrusted_tokenizer");
  const json base = json::parse(read_file_bytes(kSource / "tokenizers" / "bpe_gpt2" / "tokenizer.json"));
  auto error_with = [&](const json& j, const std::string& raw = "") {
    fs::remove_all(tmp / "t");
    fs::create_directories(tmp / "t");
    write_file_bytes(tmp / "t" / "tokenizer.json", raw.empty() ? j.dump() : raw);
    return error_of([&] { load_tokenizer((tmp / "t").string()); });
  };
  // 30,000 Digits steps: refused at load, not a stack overflow at encode.
  json seq = base;
  json steps = json::array();
  for (int i = 0; i < 30000; ++i) steps.push_back({{"type", "Digits"}, {"individual_digits", true}});
  steps.push_back(base["pre_tokenizer"]);
  seq["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
  EXPECT_THAT(error_with(seq), AllOf(HasSubstr("pretokenizers has 30001 steps"), HasSubstr("limit of 64")));
  // One vocabulary id of 100,000,000 (27 KB of JSON asking for gigabytes).
  json big = base;
  big["model"]["vocab"]["zzz"] = 100000000;
  EXPECT_THAT(error_with(big), HasSubstr("is not a token id (an integer in 0..4194303)"));
  json added = base;
  added["added_tokens"] = json::array({{{"id", 2147483647}, {"content", "<x>"}}});
  EXPECT_THAT(error_with(added), HasSubstr("added_tokens[0].id is not a token id"));
  // Deep nesting in the normalizer.
  std::string text = base.dump();
  text.replace(text.find("\"normalizer\":null"), 17, "\"normalizer\":" + nested(100000));
  EXPECT_THAT(error_with(json(), text), HasSubstr("nested deeper than 128 levels"));
  // A symlink to /dev/zero is not read until memory runs out.
  fs::remove_all(tmp / "t");
  fs::create_directories(tmp / "t");
  fs::create_symlink("/dev/zero", tmp / "t" / "tokenizer.json");
  EXPECT_THAT(error_within_seconds([&] { load_tokenizer((tmp / "t").string()); }), HasSubstr("character device"));
}

// A Split regex whose work grows with the square of the line ends in an error naming the file
// after the time limit (lowered to 1 s here), instead of running for hours.
TEST(UntrustedInput, AQuadraticPreTokenizerRegexStopsWithAnError) {
  const fs::path tmp = fresh_temp_dir("untrusted_regex");
  json j = json::parse(read_file_bytes(kSource / "tokenizers" / "bpe_gpt2" / "tokenizer.json"));
  const json split = {{"type", "Split"}, {"pattern", {{"Regex", "[a-z]*@|[a-z]"}}}, {"behavior", "Isolated"},
                      {"invert", false}};
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array({split, j["pre_tokenizer"]})}};
  fs::create_directories(tmp / "t");
  write_file_bytes(tmp / "t" / "tokenizer.json", j.dump());
  ::setenv("KVROUTE_PRETOKENIZE_SECONDS", "1", 1);
  const auto tok = load_tokenizer((tmp / "t").string());
  ::unsetenv("KVROUTE_PRETOKENIZE_SECONDS");
  EXPECT_FALSE(tok->encode("some words@here and there").empty());  // short text: fine
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT(error_within_seconds([&] { tok->encode(std::string(400000, 'a')); }),
              AllOf(HasSubstr("tokenizer.json': the pre-tokenizer regex took over 1 s"), HasSubstr("split long lines")));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

std::string raw_safetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((uint64_t(header.size()) >> (8 * i)) & 0xff);
  return out + header + data;
}

TEST(UntrustedInput, SafetensorsHeaders) {
  const fs::path tmp = fresh_temp_dir("untrusted_safetensors");
  const std::string data(64, '\0');
  auto error_opening = [&](const std::string& header) {
    write_file_bytes(tmp / "f.safetensors", raw_safetensors(header, data));
    return error_of([&] { SafetensorsFile f((tmp / "f.safetensors").string()); });
  };
  EXPECT_THAT(error_opening(R"({"w":{"dtype":"F32","shape":)" + nested(100000) + R"(,"data_offsets":[0,16]}})"),
              HasSubstr("nested deeper than 128 levels"));
  // Duplicate names: refused, where the last would silently win.
  EXPECT_THAT(error_opening(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                            R"("w":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})"),
              HasSubstr("key 'w' appears twice"));
  // Zero-size tensors at a neighbour's boundary, before or after it in the header: read.
  for (const char* header : {R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
                             R"({"z":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})",
                             R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},"z":{"dtype":"F32","shape":[0],"data_offsets":[64,64]}})",
                             R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[16,16]},"b":{"dtype":"F32","shape":[8],"data_offsets":[32,64]}})"}) {
    EXPECT_EQ(error_opening(header), "") << header;
  }
  EXPECT_THAT(error_opening(R"({"a":{"dtype":"F32","shape":[9],"data_offsets":[0,36]},"b":{"dtype":"F32","shape":[8],"data_offsets":[32,64]}})"),
              HasSubstr("overlap"));
}

TEST(UntrustedInput, ASafetensorsFileTruncatedWhileReadIsAnErrorNotSigbus) {
  const fs::path tmp = fresh_temp_dir("untrusted_truncate");
  const std::vector<float> values = random_floats(1 << 16, 1);
  write_safetensors((tmp / "m.safetensors").string(), {{"w", {1 << 16}, values.data()}}, "F32");
  const SafetensorsFile f((tmp / "m.safetensors").string());
  EXPECT_EQ(f.read_f32("w"), values);
  ASSERT_EQ(::truncate((tmp / "m.safetensors").c_str(), 1000), 0);  // the download is cut short
  EXPECT_THAT(error_of([&] { f.read_f32("w"); }), HasSubstr("truncated while it was read"));
}

TEST(UntrustedInput, IndexPathsStayInsideTheModelFolder) {
  const fs::path tmp = fresh_temp_dir("untrusted_index");
  const fs::path dir = tmp / "model";
  fs::create_directories(dir);
  const std::vector<float> a = random_floats(4, 2);
  write_safetensors((tmp / "outside.safetensors").string(), {{"a", {4}, a.data()}}, "F32");
  write_safetensors((dir / "in.safetensors").string(), {{"a", {4}, a.data()}}, "F32");
  fs::create_symlink(tmp / "outside.safetensors", dir / "link.safetensors");
  for (const std::string& file : {std::string("../../../../../../etc/passwd"), std::string("/etc/passwd"),
                                  std::string("../outside.safetensors"), std::string("link.safetensors"),
                                  std::string("sub/../../outside.safetensors"), std::string("")}) {
    SCOPED_TRACE(file);
    write_file_bytes(dir / "model.safetensors.index.json", json({{"weight_map", {{"a", file}}}}).dump());
    const std::string err = error_of([&] { read_safetensors_index((dir / "model.safetensors.index.json").string()); });
    EXPECT_THAT(err, HasSubstr("which is not a file inside the model folder"));
    EXPECT_THAT(err, Not(HasSubstr("header length")));  // nothing of the file is read, nothing leaks
  }
  write_file_bytes(dir / "model.safetensors.index.json", json({{"weight_map", {{"a", "in.safetensors"}}}}).dump());
  EXPECT_EQ(read_safetensors_index((dir / "model.safetensors.index.json").string()).at("a"),
            (dir / "in.safetensors").string());
}

}  // namespace
}  // namespace kvroute
