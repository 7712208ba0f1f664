// The evaluation harness: greedy:N against brute force on synthetic losses, the
// cache-based validation loss against the training forward, the per-row
// measurements, and the reports (markdown, CSV, JSON, plot).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <unistd.h>

#include "kvroute/data.h"
#include "kvroute/evaluate.h"
#include "kvroute/routing.h"

using namespace kvroute;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

std::vector<int> cache_layers_of(const SharingStrategy& s) {
  std::vector<int> c;
  for (std::size_t l = 0; l < s.src.size(); ++l)
    if (s.src[l] == static_cast<int>(l)) c.push_back(static_cast<int>(l));
  return c;
}

ModelConfig tiny_model() {
  ModelConfig m;
  m.vocab_size = 256;
  m.d_model = 16;
  m.n_layers = 4;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.d_ff = 24;
  m.context = 24;
  m.init_std = 0.2;
  return m;
}

std::vector<int32_t> text_tokens() {
  std::string text;
  for (int i = 0; i < 40; ++i) text += "And God said, Let there be light: and there was light " + std::to_string(i % 5) + ".\n";
  return byte_encode(text);
}

std::string read(const fs::path& p) {
  std::ifstream f(p);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

}  // namespace

TEST(GreedyStrategy, AdditiveLossDropsTheCheapestLayersInOrder) {
  const std::vector<double> penalty = {0.0, 0.5, 0.1, 0.3, 0.2, 0.05};  // cost of not caching layer l
  auto loss = [&](const SharingStrategy& s) {
    double v = 1;
    for (int l = 0; l < 6; ++l) v += s.src[l] == l ? 0 : penalty[l];
    return v;
  };
  const GreedySearch g = greedy_search("greedy:2", 6, 2, loss);
  ASSERT_EQ(g.path.size(), 5u);
  EXPECT_EQ(g.path[0].dropped_layer, -1);
  EXPECT_DOUBLE_EQ(g.path[0].val_loss, 1.0);
  const int order[] = {5, 2, 4, 3};
  double expected = 1;
  for (int i = 0; i < 4; ++i) {
    expected += penalty[order[i]];
    EXPECT_EQ(g.path[i + 1].dropped_layer, order[i]) << "step " << i;
    EXPECT_DOUBLE_EQ(g.path[i + 1].val_loss, expected);
  }
  EXPECT_EQ(cache_layers_of(g.strategy), (std::vector<int>{0, 1}));
  EXPECT_EQ(g.strategy.map_string(), "0,1,1,1,1,1");
  EXPECT_EQ(g.strategy.name, "greedy:2");
  EXPECT_EQ(g.evaluations, 1 + 5 + 4 + 3 + 2);
  EXPECT_EQ(greedy_path_string(g), "full (1.0000) -> drop 5 (1.0500) -> drop 2 (1.1500) -> drop 4 (1.3500) -> drop 3 (1.6500)");
}

TEST(GreedyStrategy, EveryStepIsTheBestSingleDropAndLayerZeroStays) {
  // A loss that depends on how far each layer reads back, so drops interact.
  const std::vector<double> weight = {9, 1.0, 0.4, 2.0, 0.7, 1.5, 0.3};
  auto loss = [&](const SharingStrategy& s) {
    double v = 0;
    for (int l = 0; l < 7; ++l) v += weight[l] * (l - s.src[l]) * (l - s.src[l]);
    return v;
  };
  const GreedySearch g = greedy_search("greedy:1", 7, 1, loss);
  ASSERT_EQ(g.path.size(), 7u);
  std::vector<int> caches = {0, 1, 2, 3, 4, 5, 6};
  for (std::size_t i = 1; i < g.path.size(); ++i) {
    // Brute force over this step's candidates.
    double best = std::numeric_limits<double>::infinity();
    int best_layer = -1;
    for (std::size_t j = 1; j < caches.size(); ++j) {
      std::vector<int> c = caches;
      c.erase(c.begin() + static_cast<long>(j));
      const double l = loss(SharingStrategy{"x", strategy_from_cache_layers(c, 7)});
      if (l < best) best = l, best_layer = caches[j];
    }
    EXPECT_EQ(g.path[i].dropped_layer, best_layer) << "step " << i;
    EXPECT_DOUBLE_EQ(g.path[i].val_loss, best);
    caches.erase(std::find(caches.begin(), caches.end(), best_layer));
    EXPECT_EQ(cache_layers_of(g.path[i].strategy), caches);
  }
  EXPECT_EQ(g.strategy.map_string(), "0,0,0,0,0,0,0");
}

TEST(GreedyStrategy, SpecParsingAndErrors) {
  EXPECT_EQ(parse_greedy_count("greedy:3", 6), 3);
  EXPECT_EQ(parse_greedy_count("greedy:6", 6), 6);
  for (const char* bad : {"greedy:0", "greedy:7", "greedy:x", "greedy:", "greedy", "greedy:2a"}) {
    try {
      parse_greedy_count(bad, 6);
      ADD_FAILURE() << bad;
    } catch (const std::invalid_argument& e) {
      EXPECT_THAT(e.what(), HasSubstr("greedy:N needs an integer N in 1..6")) << bad;
    }
  }
  EXPECT_TRUE(is_greedy_strategy(" greedy:2"));
  EXPECT_FALSE(is_greedy_strategy("cla:2"));
  try {
    parse_strategy("greedy:2", 6);
    ADD_FAILURE();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("`kvroute eval` resolves it"));
  }
  EXPECT_EQ(split_strategy_list("full,greedy:2,list:0,0,2,2;cla:2"),
            (std::vector<std::string>{"full", "greedy:2", "list:0,0,2,2", "cla:2"}));
}

TEST(Evaluate, CacheValidationLossEqualsTrainingForward) {
  auto be = make_backend("cpu");
  Model model(tiny_model(), be.get());
  model.init_weights(5);
  const std::vector<int32_t> val = text_tokens();
  const ValidationSet vs{&val, 3, 20, 4};
  for (const SharingStrategy& s : parse_strategy_list("full,cla:2,first,list:0,1,1,3", 4)) {
    double reference = 0;
    for (int i = 0; i < vs.n_batches; ++i) {
      const Batch b = val_batch(val, 3, 20, i, vs.n_batches);
      reference += model.forward(b.inputs.data(), b.targets.data(), 3, 20, fixed_routes(3, s.src));
    }
    reference /= vs.n_batches;
    EXPECT_NEAR(strategy_val_loss(model, s, vs), reference, 1e-5 * reference) << s.name;
  }
  EXPECT_EQ(batches_for_budget(1000, 3, 20), 17);
  EXPECT_EQ(batches_for_budget(60, 3, 20), 1);
  EXPECT_EQ(batches_for_budget(1, 3, 20), 1);
}

TEST(Evaluate, EveryRowCarriesItsMeasurements) {
  auto be = make_backend("cpu");
  Model model(tiny_model(), be.get());
  model.init_weights(6);
  const std::vector<int32_t> val = text_tokens();
  EvalSpec spec;
  spec.batch_size = 2;
  spec.seq_len = 16;
  spec.n_batches = 2;
  spec.bench = GenerationBenchSpec{8, 2, 4, 1, 1};
  std::ostringstream log;
  // greedy:2 chooses on other tokens than the validation windows it reports (no selection bias).
  const std::vector<int32_t> selection = byte_encode(std::string(400, 'x') + "In the beginning was the word, and the word was.");
  spec.selection_tokens = &selection;
  const auto rows = evaluate_strategies(model, "m.h5", 7, {"full", "cla:2", "greedy:2"}, val, spec, log);
  ASSERT_EQ(rows.size(), 3u);
  const std::size_t full_bytes = 2 * 4 * 1 * 8 * sizeof(float);  // K+V x layers x kv heads x head_dim x fp32
  EXPECT_EQ(rows[0].kv_bytes_per_token, full_bytes);
  EXPECT_EQ(rows[1].kv_bytes_per_token, full_bytes / 2);
  EXPECT_DOUBLE_EQ(rows[1].kv_fraction, 0.5);
  EXPECT_DOUBLE_EQ(rows[2].kv_fraction, 0.5);
  EXPECT_EQ(rows[2].strategy.n_cache_layers(), 2);
  EXPECT_EQ(rows[2].strategy.name, "greedy:2");
  EXPECT_THAT(rows[2].greedy_path, HasSubstr("chosen on the training split: full ("));
  // The path's last loss is the selection tokens', the row's val loss the validation windows'.
  const ValidationSet chosen_on{&selection, 2, 16, 2};
  const std::string last = rows[2].greedy_path.substr(rows[2].greedy_path.rfind('(') + 1);
  EXPECT_NEAR(std::stod(last), strategy_val_loss(model, rows[2].strategy, chosen_on), 1e-4);
  EXPECT_GT(std::fabs(std::stod(last) - rows[2].val_loss), 1e-3) << "selection and report on the same tokens?";
  EXPECT_THAT(log.str(), HasSubstr("choosing on 64 tokens of the training split"));
  spec.selection_tokens = nullptr;
  EXPECT_THROW(evaluate_strategies(model, "m.h5", 7, {"greedy:2"}, val, spec, log), std::invalid_argument);
  EXPECT_THAT(log.str(), HasSubstr("chosen map: " + rows[2].strategy.map_string()));
  const ValidationSet vs{&val, 2, 16, 2};
  for (const StrategyResult& r : rows) {
    EXPECT_EQ(r.checkpoint, "m.h5");
    EXPECT_EQ(r.step, 7);
    EXPECT_EQ(r.val_tokens, 64);
    EXPECT_NEAR(r.val_loss, strategy_val_loss(model, r.strategy, vs), 1e-9) << r.strategy.name;
    EXPECT_DOUBLE_EQ(r.perplexity, std::exp(r.val_loss));
    EXPECT_GT(r.ttft_ms, 0);
    EXPECT_GT(r.decode_tokens_per_s, 0);
    EXPECT_GT(r.peak_rss_kib, 0);
  }
}

// Never skipped: the per-row peak in every eval table depends on this reset, so a kernel
// or sandbox where it does not work must show up as a failure, not a silent skip.
TEST(Evaluate, PeakRssResetsBetweenRows) {
  ASSERT_TRUE(reset_peak_rss()) << "/proc/self/clear_refs cannot be written: per-row peak memory would be wrong";
  const long before = peak_rss_kib();
  {
    std::vector<char> big(256u << 20, 1);  // 256 MiB, touched
    EXPECT_GE(peak_rss_kib(), before + 200 * 1024);
  }
  ASSERT_TRUE(reset_peak_rss());
  EXPECT_LT(peak_rss_kib(), before + 100 * 1024);
}

namespace {
std::vector<StrategyResult> sample_results() {
  std::vector<StrategyResult> rows;
  for (const char* ckpt : {"runs/a/model.h5", "runs/b \"quoted\"/model.h5"})
    for (const SharingStrategy& s : parse_strategy_list("full,cla:2,first", 4)) {
      StrategyResult r;
      r.checkpoint = ckpt;
      r.step = 100;
      r.strategy = s;
      r.val_loss = 2.0 + 0.1 * (4 - s.n_cache_layers()) + (ckpt[5] == 'b' ? 0.05 : 0);
      r.perplexity = std::exp(r.val_loss);
      r.val_tokens = 4096;
      r.full_kv_bytes_per_token = 1024;
      r.kv_bytes_per_token = 256 * s.n_cache_layers();
      r.kv_fraction = s.kv_fraction();
      r.ttft_ms = 1.5;
      r.decode_tokens_per_s = 1000;
      r.peak_rss_kib = 2048;
      rows.push_back(r);
    }
  rows[2].greedy_path = "full (2.0000) -> drop 3 (2.1000)";
  return rows;
}
}  // namespace

TEST(EvalReport, MarkdownCsvAndJson) {
  const auto rows = sample_results();
  EvalReportInfo info;
  info.spec.bench = GenerationBenchSpec{64, 1, 16, 3, 1};
  const std::string md = results_markdown(rows, info);
  EXPECT_THAT(md, HasSubstr("### runs/a/model.h5 (step 100)"));
  EXPECT_THAT(md, HasSubstr("| cla:2 | 0,0,2,2 | 2/4 | 50.0% | 512 | 2.2000 | 9.025 | +10.00% | 1.50 | 1000.0 | 2.0 |"));
  EXPECT_THAT(md, HasSubstr("| first | 0,0,0,0 | 1/4 | 25.0% | 256 | 2.3000 |"));
  EXPECT_THAT(md, HasSubstr("first path: full (2.0000) -> drop 3 (2.1000)"));

  const std::string csv = results_csv(rows);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);
  EXPECT_THAT(csv, HasSubstr("runs/a/model.h5,100,cla:2,\"0,0,2,2\",2,4,0.500000,512,1024,2.200000,"));
  EXPECT_THAT(csv, HasSubstr("\"runs/b \"\"quoted\"\"/model.h5\",100,full,"));

  const std::string json = results_json(rows, info);
  EXPECT_THAT(json, HasSubstr("\"checkpoint\": \"runs/b \\\"quoted\\\"/model.h5\""));
  EXPECT_THAT(json, HasSubstr("\"strategy\": \"cla:2\", \"source_map\": [0, 0, 2, 2], \"cache_layers\": 2"));
  EXPECT_THAT(json, HasSubstr("\"prompt_len\": 64"));
  EXPECT_EQ(std::count(json.begin(), json.end(), '{'), std::count(json.begin(), json.end(), '}'));
  std::size_t n = 0;
  for (std::size_t p = 0; (p = json.find("\"val_loss\"", p)) != std::string::npos; ++p) ++n;
  EXPECT_EQ(n, 6u);
}

TEST(EvalReport, PlotOneLinePerCheckpoint) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("kvroute_eval_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto rows = sample_results();
  const std::string svg = write_loss_plot(rows, dir.string(), "svg");
  EXPECT_EQ(fs::path(svg).filename(), "loss_vs_kv.svg");
  const std::string text = read(svg);
  std::size_t lines = 0;
  for (std::size_t p = 0; (p = text.find("<polyline", p)) != std::string::npos; ++p) ++lines;
  EXPECT_EQ(lines, 2u);
  EXPECT_THAT(text, HasSubstr("runs/b &quot;quoted&quot;/model.h5"));

  EvalReportInfo info;
  const auto written = write_eval_outputs(rows, info, (dir / "out").string(), "png");
  ASSERT_EQ(written.size(), 4u);
  for (const auto& p : written) EXPECT_TRUE(fs::exists(p)) << p;
  if (std::system("gnuplot --version > /dev/null 2>&1") == 0) {
    EXPECT_EQ(fs::path(written[3]).filename(), "loss_vs_kv.png");
    std::ifstream png(written[3], std::ios::binary);
    char magic[4] = {};
    png.read(magic, 4);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  }
  EXPECT_THAT(read(dir / "out" / "results.md"), HasSubstr("![validation loss against KV cache kept](loss_vs_kv."));
  EXPECT_THROW(write_loss_plot(rows, dir.string(), "jpeg"), std::invalid_argument);
  fs::remove_all(dir);
}
