// Config layering, validation, error messages and the to_yaml round trip.
#include "kvroute/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

namespace kvroute {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Every field of config.h set to a valid non-default value.
constexpr const char* kAllFields = R"(
model:
  vocab_size: 1000
  d_model: 96
  n_layers: 6
  n_heads: 6
  n_kv_heads: 2
  d_ff: 384
  context: 256
  head_dim: 24
  qkv_bias: true
  qk_norm: true
  rope_theta: 500000.5
  rope_scaling: llama3
  rope_factor: 16
  rope_low_freq_factor: 2
  rope_high_freq_factor: 8
  rope_original_context: 4096
  norm_eps: 1e-6
  tie_embeddings: false
  init_std: 0.015
  init_from: runs/base/final.ckpt
routing:
  mode: fixed
  p: 0.25
  scheme: chain
  granularity: sequence
  strategy: list:0,0,2,2
  group: 3
train:
  backend: cuda
  threads: 8
  batch_size: 32
  seq_len: 200
  grad_accum: 4
  steps: 5000
  lr: 6e-4
  min_lr_ratio: 0.05
  warmup_steps: 200
  weight_decay: 0.01
  beta1: 0.85
  beta2: 0.999
  adam_eps: 1e-9
  grad_clip: 0.5
  seed: 9876543210
  log_interval: 5
  eval_interval: 250
  eval_batches: 16
  eval_strategies: [full, cla:4]
  out_dir: runs/exp 1
  on_nonfinite: skip
  recompute: layer
  precision: bf16
  deterministic: false
  zero: 1
  overlap_allreduce: false
  allreduce_bucket_mb: 0.5
  collective_timeout_s: 42
  checkpoint:
    interval: 500
    keep_last: 7
data:
  tokenizer: tok/dir
  shards: data/shards
  train_path: data/train.txt
  val_path: data/val.txt
  val_fraction: 0.2
  order: sequential
  verify: false
)";

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("kvroute_config_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }

  fs::path dir_;
};

// The message of the ConfigError that fn throws (fails the test if none).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError";
  return "";
}

std::string yaml_error(const std::string& text) {
  return error_of([&] {
    Config cfg;
    apply_config_yaml(cfg, text, "test.yaml");
  });
}

std::string override_error(const std::string& assignment) {
  return error_of([&] {
    Config cfg;
    apply_override(cfg, assignment);
  });
}

std::string validate_error(const Config& cfg) {
  return error_of([&] { validate(cfg); });
}

void collect_leaves(const YAML::Node& node, const std::string& prefix, std::set<std::string>& out) {
  for (const auto& kv : node) {
    std::string path = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    if (kv.second.IsMap()) collect_leaves(kv.second, path, out);
    else out.insert(path);
  }
}

std::set<std::string> leaves(const std::string& yaml) {
  std::set<std::string> out;
  collect_leaves(YAML::Load(yaml), "", out);
  return out;
}

// ---------------------------------------------------------------- defaults and layering

TEST_F(ConfigTest, DefaultsValidate) {
  EXPECT_NO_THROW(validate(Config{}));
  Config cfg = load_config({}, {});
  EXPECT_EQ(to_yaml(cfg), to_yaml(Config{}));
}

TEST_F(ConfigTest, RoutesAreDrawnOncePerBatchByDefault) {
  // The paper's setting; a config that names a granularity keeps it.
  EXPECT_EQ(load_config({}, {}).routing.granularity, "batch");
  EXPECT_EQ(load_config({}, {"routing.granularity=sequence"}).routing.granularity, "sequence");
}

TEST_F(ConfigTest, FileSetsNestedValuesAndKeepsTheRest) {
  Config cfg;
  apply_config_file(cfg, write("a.yaml", R"(
model:
  d_model: 64
  tie_embeddings: false
routing:
  mode: stochastic
train:
  lr: 1e-3
  seed: 5000000000
  checkpoint:
    keep_last: 9
)"));
  EXPECT_EQ(cfg.model.d_model, 64);
  EXPECT_FALSE(cfg.model.tie_embeddings);
  EXPECT_EQ(cfg.routing.mode, "stochastic");
  EXPECT_DOUBLE_EQ(cfg.train.lr, 1e-3);
  EXPECT_EQ(cfg.train.seed, 5000000000L);
  EXPECT_EQ(cfg.train.checkpoint.keep_last, 9);
  // Untouched keys keep their defaults.
  EXPECT_EQ(cfg.model.n_layers, Config{}.model.n_layers);
  EXPECT_EQ(cfg.train.checkpoint.interval, Config{}.train.checkpoint.interval);
  EXPECT_EQ(cfg.data.tokenizer, "byte");
}

TEST_F(ConfigTest, EveryFieldIsSettable) {
  Config c;
  apply_config_yaml(c, kAllFields, "all");
  EXPECT_NO_THROW(validate(c));
  const ModelConfig& m = c.model;
  EXPECT_EQ(m.vocab_size, 1000);
  EXPECT_EQ(m.d_model, 96);
  EXPECT_EQ(m.n_layers, 6);
  EXPECT_EQ(m.n_heads, 6);
  EXPECT_EQ(m.n_kv_heads, 2);
  EXPECT_EQ(m.d_ff, 384);
  EXPECT_EQ(m.context, 256);
  EXPECT_EQ(m.rope_theta, 500000.5);
  EXPECT_EQ(m.head_dim, 24);
  EXPECT_EQ(resolved_head_dim(m), 24);
  EXPECT_TRUE(m.qkv_bias);
  EXPECT_TRUE(m.qk_norm);
  EXPECT_EQ(m.rope_scaling, "llama3");
  EXPECT_EQ(m.rope_factor, 16);
  EXPECT_EQ(m.rope_low_freq_factor, 2);
  EXPECT_EQ(m.rope_high_freq_factor, 8);
  EXPECT_EQ(m.rope_original_context, 4096);
  EXPECT_EQ(m.norm_eps, 1e-6);
  EXPECT_FALSE(m.tie_embeddings);
  EXPECT_EQ(m.init_std, 0.015);
  EXPECT_EQ(m.init_from, "runs/base/final.ckpt");
  const RoutingConfig& r = c.routing;
  EXPECT_EQ(r.mode, "fixed");
  EXPECT_EQ(r.p, 0.25);
  EXPECT_EQ(r.scheme, "chain");
  EXPECT_EQ(r.granularity, "sequence");
  EXPECT_EQ(r.strategy, "list:0,0,2,2");
  const TrainConfig& t = c.train;
  EXPECT_EQ(t.backend, "cuda");
  EXPECT_EQ(t.threads, 8);
  EXPECT_EQ(t.batch_size, 32);
  EXPECT_EQ(t.seq_len, 200);
  EXPECT_EQ(t.grad_accum, 4);
  EXPECT_EQ(t.steps, 5000);
  EXPECT_EQ(t.lr, 6e-4);
  EXPECT_EQ(t.min_lr_ratio, 0.05);
  EXPECT_EQ(t.warmup_steps, 200);
  EXPECT_EQ(t.weight_decay, 0.01);
  EXPECT_EQ(t.beta1, 0.85);
  EXPECT_EQ(t.beta2, 0.999);
  EXPECT_EQ(t.adam_eps, 1e-9);
  EXPECT_EQ(t.grad_clip, 0.5);
  EXPECT_EQ(t.seed, 9876543210L);
  EXPECT_EQ(t.log_interval, 5);
  EXPECT_EQ(t.eval_interval, 250);
  EXPECT_EQ(t.eval_batches, 16);
  EXPECT_EQ(t.eval_strategies, "full,cla:4");
  EXPECT_EQ(t.out_dir, "runs/exp 1");
  EXPECT_EQ(t.on_nonfinite, "skip");
  EXPECT_EQ(t.recompute, "layer");
  EXPECT_EQ(t.precision, "bf16");
  EXPECT_FALSE(t.deterministic);
  EXPECT_FALSE(t.overlap_allreduce);
  EXPECT_EQ(t.allreduce_bucket_mb, 0.5);
  EXPECT_EQ(t.collective_timeout_s, 42);
  EXPECT_EQ(t.zero, 1);
  EXPECT_EQ(t.checkpoint.interval, 500);
  EXPECT_EQ(t.checkpoint.keep_last, 7);
  const DataConfig& d = c.data;
  EXPECT_EQ(d.tokenizer, "tok/dir");
  EXPECT_EQ(d.train_path, "data/train.txt");
  EXPECT_EQ(d.val_path, "data/val.txt");
  EXPECT_EQ(d.val_fraction, 0.2);
  EXPECT_EQ(d.shards, "data/shards");
  EXPECT_EQ(d.order, "sequential");
  EXPECT_FALSE(d.verify);
}

TEST_F(ConfigTest, LaterFilesWin) {
  std::string a = write("a.yaml", "model:\n  d_model: 64\n  n_layers: 2\ntrain:\n  steps: 100\n");
  std::string b = write("b.yaml", "model:\n  n_layers: 3\ntrain:\n  checkpoint:\n    interval: 5\n");
  Config cfg = load_config({a, b}, {});
  EXPECT_EQ(cfg.model.d_model, 64);  // only in a
  EXPECT_EQ(cfg.model.n_layers, 3);  // b overrides a
  EXPECT_EQ(cfg.train.steps, 100);
  EXPECT_EQ(cfg.train.checkpoint.interval, 5);
  EXPECT_EQ(load_config({b, a}, {}).model.n_layers, 2);
}

TEST_F(ConfigTest, OverridesWinOverFilesInOrder) {
  std::string a = write("a.yaml", "model:\n  n_layers: 2\ntrain:\n  lr: 0.01\n");
  Config cfg = load_config({a}, {"model.n_layers=8", "train.lr=1e-4", "model.n_layers=6"});
  EXPECT_EQ(cfg.model.n_layers, 6);
  EXPECT_DOUBLE_EQ(cfg.train.lr, 1e-4);
}

TEST_F(ConfigTest, OverrideParsesYamlScalars) {
  Config cfg;
  apply_override(cfg, "model.tie_embeddings=false");
  apply_override(cfg, "routing.strategy=list:0,0,2,2");
  apply_override(cfg, " train.checkpoint.keep_last = 5");
  apply_override(cfg, "train.grad_clip=2");  // doubles accept integers
  apply_override(cfg, "data.train_path=my data/a b.txt");
  apply_override(cfg, "model.init_from=\"x=y\"");  // only the first '=' splits
  EXPECT_FALSE(cfg.model.tie_embeddings);
  EXPECT_EQ(cfg.routing.strategy, "list:0,0,2,2");
  EXPECT_EQ(cfg.train.checkpoint.keep_last, 5);
  EXPECT_EQ(cfg.train.grad_clip, 2.0);
  EXPECT_EQ(cfg.data.train_path, "my data/a b.txt");
  EXPECT_EQ(cfg.model.init_from, "x=y");
  apply_override(cfg, "model.init_from=");  // an empty value clears a string
  EXPECT_EQ(cfg.model.init_from, "");
}

TEST_F(ConfigTest, EmptyFilesAndSectionsChangeNothing) {
  Config cfg;
  apply_config_file(cfg, write("empty.yaml", ""));
  apply_config_file(cfg, write("comments.yaml", "# nothing here\n\n"));
  apply_config_yaml(cfg, "model:\ntrain:\n  checkpoint:\n", "null sections");
  EXPECT_EQ(to_yaml(cfg), to_yaml(Config{}));
}

TEST_F(ConfigTest, NullStringMeansEmpty) {
  Config cfg;
  cfg.model.init_from = "x";
  apply_config_yaml(cfg, "model:\n  init_from:\ndata:\n  val_path: ~\n", "t");
  EXPECT_EQ(cfg.model.init_from, "");
  EXPECT_EQ(cfg.data.val_path, "");
}

// ---------------------------------------------------------------- error classes

TEST_F(ConfigTest, UnknownKeySuggestsTheNearestPath) {
  std::string e = yaml_error("model:\n  d_modl: 3\n");
  EXPECT_THAT(e, HasSubstr("test.yaml:2: unknown key 'model.d_modl' (did you mean 'model.d_model'?)"));
  EXPECT_THAT(yaml_error("modle:\n  d_model: 3\n"), HasSubstr("unknown key 'modle' (did you mean 'model'?)"));
  EXPECT_THAT(yaml_error("train:\n  checkpoint:\n    keep_lats: 3\n"),
              HasSubstr("did you mean 'train.checkpoint.keep_last'?"));
  // The right key under the wrong section.
  EXPECT_THAT(yaml_error("model:\n  seq_len: 64\n"),
              HasSubstr("unknown key 'model.seq_len' (did you mean 'train.seq_len'?)"));
  // Nothing close: no suggestion.
  e = yaml_error("completely_unrelated: 1\n");
  EXPECT_THAT(e, HasSubstr("unknown key 'completely_unrelated'"));
  EXPECT_THAT(e, ::testing::Not(HasSubstr("did you mean")));
  EXPECT_THAT(override_error("train.setps=3"), HasSubstr("unknown key 'train.setps' (did you mean 'train.steps'?)"));
}

TEST_F(ConfigTest, WrongTypesNameTheKeyAndTheExpectation) {
  EXPECT_THAT(yaml_error("model:\n  d_model: abc\n"), HasSubstr("model.d_model: expected an integer, got 'abc'"));
  EXPECT_THAT(yaml_error("model:\n  d_model: 12.5\n"), HasSubstr("model.d_model: expected an integer, got '12.5'"));
  EXPECT_THAT(yaml_error("model:\n  d_model: 1e3\n"), HasSubstr("model.d_model: expected an integer"));
  EXPECT_THAT(yaml_error("model:\n  d_model:\n"), HasSubstr("model.d_model: expected an integer, got nothing"));
  EXPECT_THAT(yaml_error("model:\n  d_model: 99999999999\n"),
              HasSubstr("model.d_model: expected an integer in [-2147483648, 2147483647]"));
  EXPECT_THAT(yaml_error("train:\n  seed: x\n"), HasSubstr("train.seed: expected an integer, got 'x'"));
  EXPECT_THAT(yaml_error("model:\n  tie_embeddings: yes\n"),
              HasSubstr("model.tie_embeddings: expected true or false, got 'yes'"));
  EXPECT_THAT(yaml_error("model:\n  tie_embeddings: 1\n"), HasSubstr("expected true or false, got '1'"));
  EXPECT_THAT(yaml_error("train:\n  lr: fast\n"), HasSubstr("train.lr: expected a number, got 'fast'"));
  EXPECT_THAT(yaml_error("train:\n  lr: .nan\n"), HasSubstr("train.lr: expected a number"));
  EXPECT_THAT(yaml_error("train:\n  lr: nan\n"), HasSubstr("train.lr: expected a number"));
  EXPECT_THAT(override_error("model.d_model=abc"), HasSubstr("model.d_model: expected an integer, got 'abc'"));
  EXPECT_THAT(override_error("model.tie_embeddings=on"), HasSubstr("expected true or false, got 'on'"));
}

TEST_F(ConfigTest, OutOfRangeValuesNameTheBound) {
  EXPECT_THAT(yaml_error("model:\n  n_layers: 0\n"), HasSubstr("model.n_layers: must be >= 1, got 0"));
  EXPECT_THAT(yaml_error("model:\n  vocab_size: 1\n"), HasSubstr("model.vocab_size: must be >= 2, got 1"));
  EXPECT_THAT(yaml_error("train:\n  threads: -1\n"), HasSubstr("train.threads: must be >= 0, got -1"));
  EXPECT_THAT(yaml_error("model:\n  rope_theta: 0\n"), HasSubstr("model.rope_theta: must be > 0, got 0"));
  EXPECT_THAT(yaml_error("model:\n  head_dim: -2\n"), HasSubstr("model.head_dim: must be >= 0, got -2"));
  EXPECT_THAT(yaml_error("model:\n  rope_factor: 0\n"), HasSubstr("model.rope_factor: must be > 0, got 0"));
  EXPECT_THAT(yaml_error("model:\n  rope_original_context: 0\n"),
              HasSubstr("model.rope_original_context: must be >= 1, got 0"));
  EXPECT_THAT(yaml_error("model:\n  rope_scaling: yarn\n"),
              HasSubstr("model.rope_scaling: expected one of none|llama3, got 'yarn'"));
  EXPECT_THAT(yaml_error("model:\n  qkv_bias: 1\n"), HasSubstr("model.qkv_bias: expected true or false"));
  EXPECT_THAT(yaml_error("routing:\n  p: 1.5\n"), HasSubstr("routing.p: must be in [0, 1], got 1.5"));
  EXPECT_THAT(override_error("train.zero=2"), HasSubstr("train.zero: must be in [0, 1], got 2"));
  EXPECT_THAT(override_error("train.allreduce_bucket_mb=0"), HasSubstr("train.allreduce_bucket_mb: must be in"));
  EXPECT_THAT(yaml_error("train:\n  beta2: 1\n"), HasSubstr("train.beta2: must be in [0, 1), got 1"));
  EXPECT_THAT(yaml_error("data:\n  val_fraction: 0\n"), HasSubstr("data.val_fraction: must be in (0, 1), got 0"));
  EXPECT_THAT(yaml_error("train:\n  checkpoint:\n    keep_last: 0\n"),
              HasSubstr("train.checkpoint.keep_last: must be >= 1, got 0"));
  EXPECT_THAT(override_error("train.grad_clip=-0.5"), HasSubstr("train.grad_clip: must be >= 0, got -0.5"));
  // Boundaries that are allowed.
  Config cfg;
  EXPECT_NO_THROW(apply_config_yaml(cfg, "routing:\n  p: 1\ntrain:\n  beta1: 0\n  steps: 0\n  warmup_steps: 0\n", "t"));
}

TEST_F(ConfigTest, BadEnumsListTheChoices) {
  EXPECT_THAT(yaml_error("routing:\n  mode: stochastc\n"),
              HasSubstr("routing.mode: expected one of none|stochastic|fixed, got 'stochastc' (did you mean "
                        "'stochastic'?)"));
  EXPECT_THAT(yaml_error("routing:\n  scheme: all\n"), HasSubstr("routing.scheme: expected one of previous|chain|any"));
  EXPECT_THAT(yaml_error("routing:\n  granularity: token\n"),
              HasSubstr("routing.granularity: expected one of sequence|batch, got 'token'"));
  EXPECT_THAT(override_error("train.backend=gpu"), HasSubstr("train.backend: expected one of cpu|cuda, got 'gpu'"));
  EXPECT_THAT(yaml_error("train:\n  on_nonfinite: ignore\n"), HasSubstr("train.on_nonfinite: expected one of stop|skip"));
  EXPECT_THAT(yaml_error("data:\n  tokenizer: \"\"\n"), HasSubstr("data.tokenizer: must not be empty"));
  EXPECT_THAT(override_error("data.tokenizer="), HasSubstr("data.tokenizer: must not be empty"));
}

TEST_F(ConfigTest, SectionsAndLeavesMustHaveTheRightShape) {
  EXPECT_THAT(yaml_error("model: 3\n"), HasSubstr("model: is a section, expected a mapping of its keys, got '3'"));
  EXPECT_THAT(yaml_error("train:\n  checkpoint: [1, 2]\n"),
              HasSubstr("train.checkpoint: is a section, expected a mapping of its keys, got a sequence"));
  EXPECT_THAT(yaml_error("model:\n  d_model:\n    x: 1\n"), HasSubstr("model.d_model: expected an integer, got a mapping"));
  EXPECT_THAT(yaml_error("train:\n  out_dir: [a, b]\n"), HasSubstr("train.out_dir: expected a string, got a sequence"));
  EXPECT_THAT(yaml_error("- model\n- train\n"), HasSubstr("test.yaml: expected a mapping of sections"));
  EXPECT_THAT(yaml_error("model:\n  d_model: 1\n  d_model: 2\n"), HasSubstr("duplicate key 'model.d_model'"));
}

TEST_F(ConfigTest, MalformedOverridesAreRefused) {
  EXPECT_THAT(override_error("model.d_model"), HasSubstr("--set 'model.d_model': expected section.key=value"));
  EXPECT_THAT(override_error("=3"), HasSubstr("the key is empty"));
  EXPECT_THAT(override_error("  =3"), HasSubstr("the key is empty"));
  EXPECT_THAT(override_error("model=3"), HasSubstr("'model' is a section"));
  EXPECT_THAT(override_error("train.checkpoint=3"), HasSubstr("'train.checkpoint' is a section"));
  EXPECT_THAT(override_error("model.d_model=[1, 2]"), HasSubstr("model.d_model: expected an integer, got a sequence"));
  EXPECT_THAT(override_error("model.d_model=[1, 2"), HasSubstr("model.d_model: cannot parse the value"));
}

TEST_F(ConfigTest, MissingFileIsNamed) {
  std::string missing = (dir_ / "nope.yaml").string();
  std::string e = error_of([&] { load_config({missing}, {}); });
  EXPECT_THAT(e, HasSubstr(missing));
  EXPECT_THAT(e, HasSubstr("config file '" + missing + "': cannot open it (No such file"));
  Config cfg;
  EXPECT_THAT(error_of([&] { apply_config_file(cfg, dir_.string()); }), HasSubstr("is a directory"));
  // A FIFO is refused at once rather than waited on.
  const std::string fifo = (dir_ / "fifo.yaml").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THAT(error_of([&] { apply_config_file(cfg, fifo); }), HasSubstr("is a FIFO, not a regular file"));
}

TEST_F(ConfigTest, YamlSyntaxErrorNamesFileAndPosition) {
  std::string path = write("broken.yaml", "model:\n  d_model: 64\n  n_layers: [1, 2\n");
  Config cfg;
  std::string e = error_of([&] { apply_config_file(cfg, path); });
  EXPECT_THAT(e, HasSubstr(path));
  EXPECT_THAT(e, HasSubstr("YAML syntax error at line"));
  EXPECT_THAT(e, HasSubstr("column"));
  path = write("tabs.yaml", "model:\n\td_model: 64\n");
  EXPECT_THAT(error_of([&] { apply_config_file(cfg, path); }), HasSubstr("YAML syntax error"));
}

TEST_F(ConfigTest, FileErrorsCarryTheLine) {
  std::string path = write("cfg.yaml", "# header\nmodel:\n  d_model: 64\n  n_heads: four\n");
  Config cfg;
  EXPECT_THAT(error_of([&] { apply_config_file(cfg, path); }),
              HasSubstr(path + ":4: model.n_heads: expected an integer, got 'four'"));
}

TEST_F(ConfigTest, FailedApplyLeavesConfigUnchanged) {
  Config cfg;
  error_of([&] { apply_config_yaml(cfg, "model:\n  d_model: 64\n  n_layers: 0\n", "t"); });
  error_of([&] { apply_override(cfg, "model.n_layers=0"); });
  EXPECT_EQ(to_yaml(cfg), to_yaml(Config{}));
}

TEST_F(ConfigTest, QuotedNumbersAreAccepted) {
  Config cfg;
  apply_config_yaml(cfg, "model:\n  d_model: \"64\"\ntrain:\n  lr: '0.5'\n", "t");
  EXPECT_EQ(cfg.model.d_model, 64);
  EXPECT_EQ(cfg.train.lr, 0.5);
}

// ---------------------------------------------------------------- cross-field rules

TEST_F(ConfigTest, CrossFieldRules) {
  Config c;
  c.model.n_kv_heads = 3;
  EXPECT_THAT(validate_error(c), HasSubstr("model.n_kv_heads (3) must divide model.n_heads (4)"));

  c = Config{};
  c.model.d_model = 130;
  EXPECT_THAT(validate_error(c), HasSubstr("model.d_model (130) must be divisible by model.n_heads (4)"));

  c = Config{};
  c.model.d_model = 12;  // head dim 3
  EXPECT_THAT(validate_error(c), HasSubstr("model.d_model / model.n_heads = 3 must be even"));

  c = Config{};
  c.model.head_dim = 7;
  EXPECT_THAT(validate_error(c), HasSubstr("model.head_dim (7) must be even"));
  c.model.d_model = 130;  // an explicit head_dim frees d_model from n_heads
  c.model.head_dim = 8;
  EXPECT_NO_THROW(validate(c));
  EXPECT_EQ(resolved_head_dim(c.model), 8);
  EXPECT_EQ(resolved_head_dim(Config{}.model), 32);

  c = Config{};
  c.model.rope_scaling = "llama3";
  c.model.rope_high_freq_factor = 1;  // == rope_low_freq_factor
  EXPECT_THAT(validate_error(c), HasSubstr("model.rope_high_freq_factor (1) must be > model.rope_low_freq_factor (1)"));
  c.model.rope_scaling = "none";  // only llama3 reads them
  EXPECT_NO_THROW(validate(c));

  c = Config{};
  c.train.seq_len = 256;
  EXPECT_THAT(validate_error(c), HasSubstr("train.seq_len (256) must be <= model.context (128)"));

  c = Config{};
  c.routing.mode = "fixed";
  c.routing.strategy = "";
  EXPECT_THAT(validate_error(c), HasSubstr("routing.strategy must be set when routing.mode is fixed"));
  c.routing.strategy = "cla:2";
  EXPECT_NO_THROW(validate(c));

  c = Config{};
  c.train.steps = 10;
  EXPECT_THAT(validate_error(c), HasSubstr("train.warmup_steps (50) must be <= train.steps (10)"));

  c = Config{};
  c.model.n_kv_heads = 1;  // multi-query attention is fine
  c.model.n_heads = 8;
  c.model.d_model = 64;
  EXPECT_NO_THROW(validate(c));
}

TEST_F(ConfigTest, ValidateRechecksRangesAndReportsEveryProblem) {
  Config c;
  c.routing.p = 1.5;
  c.train.batch_size = 0;
  c.routing.scheme = "random";
  c.model.n_kv_heads = 3;
  std::string e = validate_error(c);
  EXPECT_THAT(e, HasSubstr("routing.p: must be in [0, 1], got 1.5"));
  EXPECT_THAT(e, HasSubstr("train.batch_size: must be >= 1, got 0"));
  EXPECT_THAT(e, HasSubstr("routing.scheme: expected one of previous|chain|any|rdcla, got 'random'"));
  EXPECT_THAT(e, HasSubstr("model.n_kv_heads (3) must divide model.n_heads (4)"));

  c = Config{};
  c.model.n_heads = 0;  // no division by zero in the cross-field checks
  EXPECT_THAT(validate_error(c), HasSubstr("model.n_heads: must be >= 1, got 0"));
}

TEST_F(ConfigTest, LoadConfigValidatesTheLayeredResult) {
  std::string a = write("a.yaml", "train:\n  seq_len: 256\n");
  EXPECT_THAT(error_of([&] { load_config({a}, {}); }), HasSubstr("train.seq_len (256) must be <= model.context"));
  Config cfg = load_config({a}, {"model.context=256"});
  EXPECT_EQ(cfg.train.seq_len, 256);
  EXPECT_EQ(cfg.model.context, 256);
}

// ---------------------------------------------------------------- to_yaml

TEST_F(ConfigTest, ToYamlHasEveryKeyNestedBySection) {
  Config c;
  apply_config_yaml(c, kAllFields, "all");
  std::string dump = to_yaml(c);
  EXPECT_EQ(leaves(dump), leaves(kAllFields));
  YAML::Node root = YAML::Load(dump);
  EXPECT_EQ(root["train"]["checkpoint"]["keep_last"].as<int>(), 7);
  EXPECT_EQ(root["model"]["norm_eps"].as<double>(), 1e-6);
  EXPECT_EQ(root["train"]["seed"].as<long>(), 9876543210L);
  EXPECT_EQ(root["routing"]["strategy"].as<std::string>(), "list:0,0,2,2");
  EXPECT_EQ(leaves(to_yaml(Config{})), leaves(kAllFields));
}

TEST_F(ConfigTest, RoundTripIsExact) {
  std::string path = write("all.yaml", kAllFields);
  Config loaded = load_config({path}, {"train.lr=0.30000000000000004", "model.init_std=5e-324",
                                       "model.rope_theta=1.7976931348623157e308", "train.weight_decay=0.1"});
  std::string dump = to_yaml(loaded);
  Config back;
  apply_config_yaml(back, dump, "dump");
  EXPECT_EQ(to_yaml(back), dump);
  EXPECT_EQ(back.train.lr, 0.1 + 0.2);
  EXPECT_EQ(back.model.init_std, 5e-324);
  EXPECT_EQ(back.model.rope_theta, 1.7976931348623157e308);
  EXPECT_EQ(back.train.seed, 9876543210L);
  EXPECT_EQ(back.train.out_dir, "runs/exp 1");
}

TEST_F(ConfigTest, RoundTripKeepsAwkwardStrings) {
  for (std::string s : {"", "true", "False", "yes", "~", "null", "123", "-1.5e3", ".inf", " padded ", "a: b", "#hash",
                        "x #y", "multi\nline", "quote\" and 'apostrophe'", "ünïcödé", "- dash", "[x]", "{y}", "*star",
                        "&amp", "!tag", "%pct", "@at", "`tick`", "|pipe", ">gt", "tab\there"}) {
    SCOPED_TRACE("string: '" + s + "'");
    Config c;
    c.model.init_from = c.routing.strategy = c.data.train_path = c.data.val_path = s;
    if (!s.empty()) c.data.tokenizer = c.train.out_dir = s;  // non-empty keys
    Config back;
    apply_config_yaml(back, to_yaml(c), "dump");
    EXPECT_EQ(back.model.init_from, s);
    EXPECT_EQ(back.routing.strategy, s);
    EXPECT_EQ(back.train.out_dir, c.train.out_dir);
    EXPECT_EQ(back.data.train_path, s);
    EXPECT_EQ(back.data.val_path, s);
    EXPECT_EQ(back.data.tokenizer, c.data.tokenizer);
    // Plain YAML readers see a string too (nulls and bools are quoted).
    EXPECT_EQ(YAML::Load(to_yaml(c))["data"]["train_path"].as<std::string>(), s);
  }
}

}  // namespace
}  // namespace kvroute
