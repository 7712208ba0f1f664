// Hugging Face models in and out (hf_model.h): the golden fixtures of tests/fixtures/hf_models
// (tiny random models saved by transformers, with transformers' own logits; see the README
// there) imported and run through kvroute's forward; export then import; bad folders.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "data_fixtures.h"
#include "kvroute/backend.h"
#include "kvroute/checkpoint.h"
#include "kvroute/hf_model.h"
#include "kvroute/model.h"
#include "kvroute/routing.h"
#include "kvroute/safetensors.h"
#include "kvroute/strategy.h"
#include "run_kvroute.h"

namespace kvroute {
namespace {

namespace fs = std::filesystem;
using testing_cli::run;
using testing_data::fresh_temp_dir;
using testing_data::read_file_bytes;
using testing_data::write_file_bytes;

fs::path fixture(const std::string& name) { return fs::path(KVROUTE_SOURCE_DIR) / "tests/fixtures/hf_models" / name; }

// kvroute's logits [B*T, V] for the fixture's reference input ids, every layer on its own cache.
std::vector<float> kvroute_logits(const std::vector<float>& params, const ModelConfig& mc, const std::vector<int32_t>& ids,
                                  int B, int T, const RouteTable& routes) {
  auto be = make_backend("cpu");
  Model model(mc, be.get());
  model.params_from_host(params);
  model.forward(ids.data(), nullptr, B, T, routes);
  std::vector<float> out(static_cast<std::size_t>(B) * T * mc.vocab_size);
  be->copy_to_host(out.data(), model.logits(), out.size() * sizeof(float));
  return out;
}

struct Reference {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  int B = 0, T = 0;
};

Reference read_reference(const fs::path& dir) {
  const SafetensorsFile ref((dir / "reference.safetensors").string());
  Reference r;
  const std::vector<float> ids = ref.read_f32("input_ids");
  r.B = static_cast<int>(ref.find("input_ids")->shape[0]);
  r.T = static_cast<int>(ref.find("input_ids")->shape[1]);
  for (float x : ids) r.ids.push_back(static_cast<int32_t>(x));
  r.logits = ref.read_f32("logits");
  return r;
}

// Largest |a - b| relative to the largest |b|.
double max_relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double err = 0, scale = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, std::abs(double(a[i]) - b[i]));
    scale = std::max(scale, std::abs(double(b[i])));
  }
  return err / scale;
}

class GoldenModel : public ::testing::TestWithParam<const char*> {};

TEST_P(GoldenModel, ImportedLogitsMatchTransformers) {
  const fs::path dir = fixture(GetParam());
  const HfModelConfig hf = read_hf_config(dir.string());
  const Reference ref = read_reference(dir);
  const std::vector<float> params = read_hf_weights(dir.string(), hf);
  const std::vector<float> logits =
      kvroute_logits(params, hf.model, ref.ids, ref.B, ref.T, identity_routes(ref.B, hf.model.n_layers));
  ASSERT_EQ(logits.size(), ref.logits.size());
  const double err = max_relative_error(logits, ref.logits);
  std::cout << GetParam() << ": max |kvroute - transformers| / max |transformers| = " << err << "\n";
  EXPECT_LT(err, 1e-4) << GetParam() << ": max |kvroute - transformers| / max |transformers| = " << err;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenModel, ::testing::Values("llama2", "llama3", "mistral", "qwen2", "qwen3"));

TEST(HfConfig, EachFixtureMapsToTheModelKeysItsFamilyNeeds) {
  const HfModelConfig llama3 = read_hf_config(fixture("llama3").string());
  EXPECT_EQ(llama3.architecture, "LlamaForCausalLM");
  EXPECT_EQ(llama3.model.rope_scaling, "llama3");  // transformers 5 writes rope_parameters
  EXPECT_EQ(llama3.model.rope_theta, 500000.0);
  EXPECT_EQ(llama3.model.rope_original_context, 64);
  EXPECT_TRUE(llama3.model.tie_embeddings);
  EXPECT_EQ(llama3.model.head_dim, 0);  // 16 = 64 / 4: kept implicit
  const HfModelConfig qwen2 = read_hf_config(fixture("qwen2").string());
  EXPECT_TRUE(qwen2.model.qkv_bias);
  EXPECT_FALSE(qwen2.model.qk_norm);
  const HfModelConfig qwen3 = read_hf_config(fixture("qwen3").string());
  EXPECT_TRUE(qwen3.model.qk_norm);
  EXPECT_EQ(qwen3.model.head_dim, 32);
  const HfModelConfig llama2 = read_hf_config(fixture("llama2").string());
  EXPECT_FALSE(llama2.model.tie_embeddings);
  EXPECT_EQ(llama2.model.norm_eps, 1e-5);
  // transformers 4 spelling: rope_theta and rope_scaling at the top level.
  const HfModelConfig v4 = parse_hf_config(
      R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
          "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32, "rope_theta": 5e5,
          "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192}, "torch_dtype": "bfloat16",
          "eos_token_id": [128001, 128008]})",
      "v4.json");
  EXPECT_EQ(v4.model.rope_factor, 32.0);
  EXPECT_EQ(v4.model.n_kv_heads, 2);  // absent: as many as query heads
  EXPECT_EQ(v4.dtype, "bfloat16");
  EXPECT_EQ(v4.eos_token_id, 128001);
}

std::string config_with(const std::string& extra) {
  return R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
             "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32)" +
         extra + "}";
}

std::string config_error(const std::string& text) {
  try {
    parse_hf_config(text, "dir/config.json");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(HfConfig, UnsupportedModelsAreRefusedNamingTheFileAndTheKey) {
  using ::testing::AllOf;
  using ::testing::HasSubstr;
  EXPECT_THAT(config_error(R"({"architectures": ["GPTNeoXForCausalLM"]})"),
              AllOf(HasSubstr("dir/config.json"), HasSubstr("architectures"), HasSubstr("GPTNeoXForCausalLM")));
  EXPECT_THAT(config_error(config_with(R"(, "num_local_experts": 8)")), HasSubstr("num_local_experts: mixture-of-experts"));
  EXPECT_THAT(config_error(config_with(R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4.0})")),
              AllOf(HasSubstr("rope_scaling.rope_type"), HasSubstr("'yarn'")));
  EXPECT_THAT(config_error(config_with(R"(, "quantization_config": {"quant_method": "fp8"})")),
              HasSubstr("quantization_config"));
  EXPECT_THAT(config_error(R"({"architectures": ["MistralForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
                               "max_position_embeddings": 32, "sliding_window": 4096})"),
              HasSubstr("sliding_window: sliding-window attention is not supported"));
  EXPECT_THAT(config_error(config_with(R"(, "attention_bias": true)")), HasSubstr("attention_bias"));
  EXPECT_THAT(config_error(config_with(R"(, "hidden_act": "gelu")")), HasSubstr("hidden_act"));
  EXPECT_THAT(config_error(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": "64"})"),
              HasSubstr("hidden_size: expected an integer"));
  EXPECT_THAT(config_error(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10})"),
              HasSubstr("hidden_size: missing"));
  EXPECT_THAT(config_error("{not json"), HasSubstr("not valid JSON"));
}

// A copy of a fixture folder to damage.
fs::path copy_fixture(const std::string& name, const fs::path& tmp) {
  const fs::path dst = tmp / name;
  fs::remove_all(dst);
  fs::copy(fixture(name), dst, fs::copy_options::recursive);
  return dst;
}

std::string import_error(const fs::path& dir) {
  try {
    read_hf_weights(dir.string(), read_hf_config(dir.string()));
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

// Rewrites one safetensors file with `edit` applied to its tensor list (all as F32).
void rewrite(const fs::path& file, const std::function<void(std::vector<std::pair<std::string, std::vector<float>>>&,
                                                             std::map<std::string, std::vector<int64_t>>&)>& edit) {
  std::vector<std::pair<std::string, std::vector<float>>> values;
  std::map<std::string, std::vector<int64_t>> shapes;
  {
    const SafetensorsFile f(file.string());
    for (const SafetensorsEntry& e : f.tensors()) {
      values.emplace_back(e.name, f.read_f32(e.name));
      shapes[e.name] = e.shape;
    }
  }
  edit(values, shapes);
  std::vector<NamedTensor> out;
  for (const auto& [name, v] : values) out.push_back(NamedTensor{name, shapes[name], v.data()});
  write_safetensors(file.string(), out, "F32");
}

TEST(HfImport, DamagedFoldersAreRefusedNamingTheFileAndTheTensor) {
  using ::testing::AllOf;
  using ::testing::HasSubstr;
  const fs::path tmp = fresh_temp_dir("hf_damaged");
  // A missing tensor.
  fs::path d = copy_fixture("llama2", tmp);
  rewrite(d / "model.safetensors", [](auto& values, auto&) {
    std::erase_if(values, [](const auto& p) { return p.first == "model.layers.1.mlp.up_proj.weight"; });
  });
  EXPECT_THAT(import_error(d), AllOf(HasSubstr("lacks tensor 'model.layers.1.mlp.up_proj.weight'"), HasSubstr("llama2")));
  // A misshaped one.
  d = copy_fixture("llama2", tmp);
  rewrite(d / "model.safetensors", [](auto& values, auto& shapes) {
    for (auto& [name, v] : values)
      if (name == "model.norm.weight") v.resize(32);
    shapes["model.norm.weight"] = {32};
  });
  EXPECT_THAT(import_error(d), AllOf(HasSubstr("model.safetensors"), HasSubstr("'model.norm.weight' is [32]"),
                                     HasSubstr("config.json implies [64]")));
  // A tensor kvroute has no place for (an output-projection bias).
  d = copy_fixture("llama2", tmp);
  rewrite(d / "model.safetensors", [](auto& values, auto& shapes) {
    values.emplace_back("model.layers.0.self_attn.o_proj.bias", std::vector<float>(64, 0.f));
    shapes["model.layers.0.self_attn.o_proj.bias"] = {64};
  });
  EXPECT_THAT(import_error(d), HasSubstr("'model.layers.0.self_attn.o_proj.bias' has no place"));
  // An index that names a missing shard.
  d = copy_fixture("llama3", tmp);
  fs::remove(d / "model-00002-of-00003.safetensors");
  EXPECT_THAT(import_error(d), HasSubstr("model-00002-of-00003.safetensors"));
  // A truncated file.
  d = copy_fixture("mistral", tmp);
  std::string bytes = read_file_bytes(d / "model.safetensors");
  write_file_bytes(d / "model.safetensors", bytes.substr(0, bytes.size() - 1000));
  EXPECT_THAT(import_error(d), AllOf(HasSubstr("model.safetensors"), HasSubstr("truncated")));
  // A header that lies about an offset (points past the data).
  d = copy_fixture("mistral", tmp);
  bytes = read_file_bytes(d / "model.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  header["model.norm.weight"]["data_offsets"][1] = header["model.norm.weight"]["data_offsets"][1].get<uint64_t>() + (1u << 30);
  std::string text = header.dump();
  text.append(n > text.size() ? n - text.size() : 0, ' ');
  const uint64_t m = text.size();
  write_file_bytes(d / "model.safetensors", std::string(reinterpret_cast<const char*>(&m), 8) + text + bytes.substr(8 + n));
  EXPECT_THAT(import_error(d), AllOf(HasSubstr("model.norm.weight"), HasSubstr("outside")));
  // fp8 weights.
  d = copy_fixture("mistral", tmp);
  bytes = read_file_bytes(d / "model.safetensors");
  std::memcpy(&n, bytes.data(), 8);
  header = nlohmann::json::parse(bytes.substr(8, n));
  // Relabel a [64] F32 tensor (256 bytes) as [256] F8_E4M3: same bytes, another dtype.
  header["model.norm.weight"]["dtype"] = "F8_E4M3";
  header["model.norm.weight"]["shape"] = {256};
  text = header.dump();
  text.append(n > text.size() ? n - text.size() : 0, ' ');
  const uint64_t m2 = text.size();
  write_file_bytes(d / "model.safetensors", std::string(reinterpret_cast<const char*>(&m2), 8) + text + bytes.substr(8 + n));
  EXPECT_THAT(import_error(d), HasSubstr("model.norm.weight"));
  // No weights at all.
  d = copy_fixture("mistral", tmp);
  fs::remove(d / "model.safetensors");
  EXPECT_THAT(import_error(d), HasSubstr("has neither model.safetensors nor model.safetensors.index.json"));
}

TEST(HfExport, ExportThenImportIsBitExactInFp32AndRoundsOnceInBf16) {
  const fs::path tmp = fresh_temp_dir("hf_roundtrip");
  for (const char* name : {"llama2", "llama3", "mistral", "qwen2", "qwen3"}) {
    SCOPED_TRACE(name);
    const fs::path ckpt = tmp / (std::string(name) + ".h5");
    HfImportOptions io;
    io.dir = fixture(name).string();
    io.out = ckpt.string();
    io.force = true;
    const HfImportReport r = import_hf(io);
    const std::vector<ParamTensor> layout = parameter_layout(r.config.model);
    const std::vector<float> original = read_checkpoint(ckpt.string(), r.config.model, layout, false).params;
    EXPECT_EQ(original, read_hf_weights(fixture(name).string(), r.config));

    for (const std::string dtype : {"fp32", "bf16"}) {
      HfExportOptions eo;
      eo.checkpoint = ckpt.string();
      eo.out = (tmp / (std::string(name) + "_" + dtype)).string();
      eo.dtype = dtype;
      eo.force = true;
      export_hf(eo);
      const HfModelConfig back = read_hf_config(eo.out);
      EXPECT_TRUE(model_shape_differences(back.model, r.config.model).empty());
      EXPECT_EQ(back.model.rope_scaling, r.config.model.rope_scaling);
      EXPECT_EQ(back.model.rope_theta, r.config.model.rope_theta);
      EXPECT_EQ(back.model.norm_eps, r.config.model.norm_eps);
      const std::vector<float> again = read_hf_weights(eo.out, back);
      ASSERT_EQ(again.size(), original.size());
      if (dtype == "fp32") {
        EXPECT_EQ(0, std::memcmp(again.data(), original.data(), original.size() * sizeof(float)));
      } else {
        std::size_t differ = 0;
        for (std::size_t i = 0; i < original.size(); ++i) {
          uint32_t bits;
          std::memcpy(&bits, &original[i], 4);
          const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;  // nearest even
          float expect;
          std::memcpy(&expect, &rounded, 4);
          differ += again[i] != expect;
        }
        EXPECT_EQ(differ, 0u);
      }
    }
  }
}

TEST(HfExport, ConfigJsonCarriesTheRoutingSettingsAndARecommendedSharingMap) {
  const fs::path tmp = fresh_temp_dir("hf_kvroute_block");
  HfImportOptions io;
  io.dir = fixture("llama2").string();
  io.out = (tmp / "m.h5").string();
  import_hf(io);
  HfExportOptions eo;
  eo.checkpoint = io.out;
  eo.out = (tmp / "out").string();
  const HfExportReport r = export_hf(eo);
  EXPECT_EQ(r.architecture, "LlamaForCausalLM");
  const auto j = nlohmann::json::parse(read_file_bytes(tmp / "out/config.json"));
  EXPECT_EQ(j["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(j["kvroute"]["routing"]["mode"], "none");
  EXPECT_EQ(j["kvroute"]["recommended_sharing"]["strategy"], "full");
  EXPECT_EQ(j["kvroute"]["recommended_sharing"]["source_layer"].size(), 2u);
  EXPECT_FALSE(fs::exists(tmp / "out.tmp"));
  // Exporting again over it needs --force.
  EXPECT_THROW(export_hf(eo), std::runtime_error);
}

TEST(HfCli, ImportInfoTrainFromTheFolderAndExport) {
  using ::testing::AllOf;
  using ::testing::HasSubstr;
  const fs::path tmp = fresh_temp_dir("hf_cli");
  const std::string dir = fixture("llama2").string();
  auto r = run("import hf " + dir + " --out " + (tmp / "m.h5").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, AllOf(HasSubstr("imported LlamaForCausalLM"), HasSubstr("peak memory")));
  r = run("ckpt info " + (tmp / "m.h5").string() + " --verify");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("layers/1/mlp/w_down"));
  // Training straight from the folder: its config.json sets the model, a few routed steps run.
  write_file_bytes(tmp / "corpus.txt", testing_data::join_documents(testing_data::generated_documents(60)));
  r = run("train --set model.init_from=" + dir + " --set data.train_path=" + (tmp / "corpus.txt").string() +
          " --set train.steps=3 --set train.batch_size=2 --set train.seq_len=32 --set train.warmup_steps=1"
          " --set train.eval_batches=1 --set routing.mode=stochastic --set routing.p=0.6 --set train.out_dir=" +
          (tmp / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("config.json (LlamaForCausalLM)"));
  r = run("export hf " + (tmp / "run/model.h5").string() + " --out " + (tmp / "exported").string() + " --dtype fp32");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = nlohmann::json::parse(read_file_bytes(tmp / "exported/config.json"));
  EXPECT_EQ(j["kvroute"]["routing"]["mode"], "stochastic");
  EXPECT_EQ(j["kvroute"]["recommended_sharing"]["strategy"], "cla:2");
  EXPECT_TRUE(fs::exists(tmp / "exported/tokenizer.json"));  // the byte tokenizer in Hugging Face form
  // The exported folder comes back in: its byte-level tokenizer.json is the tokenizer, and the
  // model generates through a shared cache.
  r = run("import hf " + (tmp / "exported").string() + " --out " + (tmp / "back.h5").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("back-tokenizer"));
  r = run("generate " + (tmp / "back.h5").string() + " --strategy cla:2 --prompt 'In the' --max-new-tokens 4");
  ASSERT_EQ(r.status, 0) << r.output;
  // A tokenizer with more ids than the model's vocabulary is refused before any weight is read.
  const fs::path mixed = copy_fixture("llama2", tmp);
  fs::copy(fs::path(KVROUTE_SOURCE_DIR) / "tests/fixtures/tokenizers/bpe_llama3/tokenizer.json", mixed / "tokenizer.json");
  r = run("import hf " + mixed.string() + " --out " + (tmp / "mixed.h5").string());
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, AllOf(HasSubstr("more than config.json's vocab_size 300"), HasSubstr(mixed.string())));
  EXPECT_FALSE(fs::exists(tmp / "mixed.h5"));
  // Weights that fail after the tokenizer was accepted leave no tokenizer folder either.
  const fs::path broken = copy_fixture("llama2", tmp);
  fs::copy(tmp / "exported/tokenizer.json", broken / "tokenizer.json");
  fs::remove(broken / "model.safetensors");
  r = run("import hf " + broken.string() + " --out " + (tmp / "broken.h5").string());
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("has neither model.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "broken.h5"));
  EXPECT_FALSE(fs::exists(tmp / "broken-tokenizer"));
  EXPECT_FALSE(fs::exists(tmp / "broken-tokenizer.tmp"));
  r = run("import hf " + (tmp / "nope").string() + " --out " + (tmp / "x.h5").string());
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("no such directory"));
}


// Outputs that are, contain or lie inside an input used to be deleted with --force: the
// checkpoint by `export --out .` in its folder, a run's checkpoints by `export RUN/model.h5 --out
// RUN`, the model folder's weights by `import --tokenizer-out SRC` or `--out SRC/model.safetensors`.
// Each is now refused before anything is deleted or written, naming both paths.
TEST(HfOutputs, AnOutputThatIsContainsOrLiesInsideAnInputIsRefusedAndNothingIsDeleted) {
  using ::testing::AllOf;
  using ::testing::HasSubstr;
  const fs::path tmp = fresh_temp_dir("hf_overlap");
  const fs::path src = copy_fixture("llama2", tmp);
  write_file_bytes(src / "tokenizer.json", read_file_bytes(fs::path(KVROUTE_SOURCE_DIR) /
                                                           "tests/fixtures/tokenizers/kv_byte/exported/tokenizer.json"));
  fs::create_directories(tmp / "ck");
  auto r = run("import hf " + src.string() + " --out " + (tmp / "ck/model.h5").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string ckpt = read_file_bytes(tmp / "ck/model.h5");

  // export --out . inside the checkpoint's folder.
  r = testing_cli::run_shell("cd " + (tmp / "ck").string() + " && " + KVROUTE_BINARY + " export hf model.h5 --out . --force");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, AllOf(HasSubstr("--out '.' contains the checkpoint 'model.h5'"),
                              HasSubstr("nothing was deleted or written")));
  EXPECT_EQ(read_file_bytes(tmp / "ck/model.h5"), ckpt);
  // export RUN/model.h5 --out RUN: the run's checkpoints stay.
  fs::create_directories(tmp / "run/checkpoints");
  fs::copy_file(tmp / "ck/model.h5", tmp / "run/model.h5");
  fs::copy_file(tmp / "ck/model.h5", tmp / "run/checkpoints/step_00000004.h5");
  r = run("export hf " + (tmp / "run/model.h5").string() + " --out " + (tmp / "run").string() + " --force");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("contains the checkpoint"));
  EXPECT_TRUE(fs::exists(tmp / "run/checkpoints/step_00000004.h5"));
  EXPECT_TRUE(fs::exists(tmp / "run/model.h5"));
  // The checkpoint's tokenizer folder is an input too.
  r = run("export hf " + (tmp / "ck/model.h5").string() + " --out " + (tmp / "ck/model-tokenizer").string() + " --force");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("is the checkpoint's tokenizer"));
  EXPECT_TRUE(fs::exists(tmp / "ck/model-tokenizer/tokenizer.json"));
  // import --tokenizer-out SRC, --out SRC/model.safetensors.
  const std::string weights = read_file_bytes(src / "model.safetensors");
  r = run("import hf " + src.string() + " --out " + (tmp / "x.h5").string() + " --tokenizer-out " + src.string() +
          " --force");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("--tokenizer-out '" + src.string() + "' is the model folder"));
  r = run("import hf " + src.string() + " --out " + (src / "model.safetensors").string() + " --force");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("--out '" + (src / "model.safetensors").string() + "' lies inside the model folder"));
  r = run("import hf " + src.string() + " --out " + (src / "kv.h5").string());
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("lies inside the model folder"));
  EXPECT_EQ(read_file_bytes(src / "model.safetensors"), weights);
  EXPECT_FALSE(fs::exists(tmp / "x.h5"));
  EXPECT_FALSE(fs::exists(src / "kv.h5"));
  // A symlinked route to the same folder is seen through.
  fs::create_directory_symlink(tmp / "ck", tmp / "link");
  r = run("export hf " + (tmp / "link/model.h5").string() + " --out " + (tmp / "ck").string() + " --force");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("contains the checkpoint"));
  EXPECT_EQ(read_file_bytes(tmp / "ck/model.h5"), ckpt);
  // export hf-tokenizer over its own tokenizer folder.
  const fs::path kv = tmp / "kv_unigram";
  fs::copy(fs::path(KVROUTE_SOURCE_DIR) / "tests/fixtures/tokenizers/kv_unigram", kv, fs::copy_options::recursive);
  r = run("export hf-tokenizer " + kv.string() + " --out " + kv.string() + " --force");
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("is the tokenizer"));
  EXPECT_TRUE(fs::exists(kv / "tokenizer.model"));
}

// --force used to remove the old export before renaming the new one in: a SIGKILL between the
// two left neither. Now the old one is set aside, the new one renamed in, the old one removed;
// a later run settles what an interrupted one left and says so; a failed export leaves no .tmp.
TEST(HfOutputs, ReplacingAnExportIsCrashSafeAndAFailedOneLeavesNothing) {
  using ::testing::HasSubstr;
  const fs::path tmp = fresh_temp_dir("hf_replace");
  HfImportOptions io;
  io.dir = fixture("llama2").string();
  io.out = (tmp / "m.h5").string();
  import_hf(io);
  HfExportOptions eo;
  eo.checkpoint = io.out;
  eo.out = (tmp / "out").string();
  export_hf(eo);
  const std::string config = read_file_bytes(tmp / "out/config.json");
  // Killed after the old export was set aside, before the new one was renamed in.
  fs::rename(tmp / "out", tmp / "out.kvroute-old");
  fs::create_directories(tmp / "out.tmp");
  write_file_bytes(tmp / "out.tmp/config.json", "{");
  eo.force = false;
  EXPECT_THROW(export_hf(eo), std::runtime_error);  // it exists again: restored, so --force is needed
  EXPECT_EQ(read_file_bytes(tmp / "out/config.json"), config);
  EXPECT_FALSE(fs::exists(tmp / "out.kvroute-old"));
  EXPECT_FALSE(fs::exists(tmp / "out.tmp"));
  // Killed after the new one was renamed in, before the old one was removed.
  fs::create_directories(tmp / "out.kvroute-old");
  eo.force = true;
  const HfExportReport r = export_hf(eo);
  ASSERT_FALSE(r.notes.empty());
  EXPECT_THAT(r.notes[0], HasSubstr("removed '" + (tmp / "out.kvroute-old").string() + "'"));
  EXPECT_FALSE(fs::exists(tmp / "out.kvroute-old"));
  EXPECT_EQ(read_file_bytes(tmp / "out/config.json"), config);
  // A failed export (here after the weights were written) leaves the old one and no .tmp.
  auto failed = run("export hf " + io.out + " --out " + eo.out + " --force --arch Qwen3ForCausalLM");
  EXPECT_NE(failed.status, 0);
  EXPECT_THAT(failed.output, HasSubstr("cannot hold this model"));
  EXPECT_FALSE(fs::exists(tmp / "out.tmp"));
  EXPECT_EQ(read_file_bytes(tmp / "out/config.json"), config);
  failed = run("export hf " + io.out + " --out " + (tmp / "new").string() + " --arch Qwen3ForCausalLM");
  EXPECT_NE(failed.status, 0);
  EXPECT_FALSE(fs::exists(tmp / "new"));
  EXPECT_FALSE(fs::exists(tmp / "new.tmp"));
  // A killed import leaves <out>.tmp: the next import removes it, saying so.
  write_file_bytes(tmp / "again.h5.tmp", "partial");
  io.out = (tmp / "again.h5").string();
  const HfImportReport ir = import_hf(io);
  EXPECT_THAT(ir.notes, ::testing::Contains(HasSubstr("removed '" + (tmp / "again.h5.tmp").string() + "'")));
  EXPECT_FALSE(fs::exists(tmp / "again.h5.tmp"));
}

// A missing --out folder used to be reported as "(disk full?)"; rms_norm_eps was printed as 0.0.
TEST(HfCli, AMissingOutFolderIsNamedAndRmsNormEpsIsPrintedAsItIs) {
  using ::testing::HasSubstr;
  using ::testing::Not;
  const fs::path tmp = fresh_temp_dir("hf_cli_minor");
  auto r = run("import hf " + fixture("llama2").string() + " --out " + (tmp / "nope/m.h5").string());
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.output, HasSubstr("the parent directory '" + (tmp / "nope").string() + "' of --out"));
  EXPECT_THAT(r.output, HasSubstr("does not exist"));
  EXPECT_THAT(r.output, Not(HasSubstr("disk full")));
  r = run("import hf " + fixture("llama2").string() + " --out " + (tmp / "m.h5").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("rms_norm_eps 1e-05"));
  // save_checkpoint itself names a missing folder too.
  auto be = make_backend("cpu");
  const CheckpointInfo info = read_checkpoint_info((tmp / "m.h5").string());
  Model model(info.config.model, be.get());
  try {
    save_checkpoint((tmp / "nope/again.h5").string(), model, info.config, 0);
    ADD_FAILURE() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_THAT(e.what(), HasSubstr("its directory '" + (tmp / "nope").string() + "' does not exist"));
  }
}

}  // namespace
}  // namespace kvroute
