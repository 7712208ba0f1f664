// train.eval_strategies: every evaluation during training reports the validation loss under
// each listed sharing strategy (train.log, metrics.jsonl, the final line) and rank 0 keeps
// the curves (val_loss_by_strategy.dat, and a gnuplot PNG where gnuplot is installed).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "data_fixtures.h"
#include "kvroute/config.h"
#include "run_kvroute.h"
#include "train/strategy_curves.h"

namespace kvroute {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_cli::Result;
using testing_cli::run;

std::string error_of(const std::vector<std::string>& overrides) {
  try {
    load_config({}, overrides);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(EvalStrategies, ConfigTakesACommaListOrAYamlListAndRefusesWhatCannotBeEvaluated) {
  EXPECT_EQ(load_config({}, {}).train.eval_strategies, "full,cla:2");
  EXPECT_EQ(load_config({}, {"train.eval_strategies=[full, cla:4, half]"}).train.eval_strategies, "full,cla:4,half");
  EXPECT_EQ(load_config({}, {"train.eval_strategies=cla:2"}).train.eval_strategies, "cla:2");
  Config c;
  apply_config_yaml(c, "train:\n  eval_strategies:\n    - full\n    - keep:2\n", "test.yaml");
  EXPECT_EQ(c.train.eval_strategies, "full,keep:2");
  EXPECT_THAT(to_yaml(c), HasSubstr("eval_strategies: full,keep:2"));
  EXPECT_THAT(error_of({"train.eval_strategies=full,greedy:2"}), HasSubstr("greedy:2 is a search, for kvroute eval only"));
  EXPECT_THAT(error_of({"train.eval_strategies=full,yoco"}), HasSubstr("train.eval_strategies"));
  EXPECT_THAT(error_of({"train.eval_strategies=[full, [cla:2]]"}), HasSubstr("expected a list of names"));
}

TEST(EvalStrategies, CurvesDropRowsARunRepeatsAndStartAfreshForOtherStrategies) {
  const fs::path dir = testing_data::fresh_temp_dir("curves");
  {
    StrategyCurves c(dir, {"full", "cla:2"});
    c.add(10, {3.0, 3.1});
    c.add(20, {2.5, 2.6});
    c.add(30, {2.2, 2.4});
  }
  StrategyCurves resumed(dir, {"full", "cla:2"});  // a run resumed from its step-20 checkpoint
  ASSERT_EQ(resumed.rows().size(), 3u);
  resumed.add(30, {2.25, 2.35});
  ASSERT_EQ(resumed.rows().size(), 3u);
  EXPECT_EQ(resumed.rows()[2].first, 30);
  EXPECT_DOUBLE_EQ(resumed.rows()[2].second[1], 2.35);
  resumed.add(25, {2.3, 2.45});  // a step before the last row replaces everything after it
  ASSERT_EQ(resumed.rows().size(), 3u);
  EXPECT_EQ(resumed.rows()[2].first, 25);
  EXPECT_EQ(testing_data::read_file_bytes(dir / StrategyCurves::kData),
            "# step full cla:2\n10 3.000000 3.100000\n20 2.500000 2.600000\n25 2.300000 2.450000\n");
  StrategyCurves other(dir, {"full", "half"});
  EXPECT_TRUE(other.rows().empty()) << "rows of other strategies were taken over";
  EXPECT_THROW(other.add(5, {1.0}), std::invalid_argument);
  fs::remove_all(dir);
}

TEST(EvalStrategies, ATrainingRunReportsEveryStrategyAtEveryEvaluation) {
  const fs::path dir = testing_data::fresh_temp_dir("eval_strategies_run");
  {
    std::ofstream text(dir / "corpus.txt");
    for (int i = 0; i < 300; ++i) text << "And the evening and the morning were the day " << i % 9 << ".\n";
  }
  const Result r = run("train --set model.vocab_size=256 --set model.d_model=32 --set model.n_layers=4 "
                       "--set model.n_heads=2 --set model.n_kv_heads=1 --set model.d_ff=64 --set model.context=32 "
                       "--set train.batch_size=4 --set train.seq_len=32 --set train.steps=12 --set train.warmup_steps=2 "
                       "--set train.eval_interval=4 --set train.eval_batches=2 --set train.threads=1 "
                       "--set 'train.eval_strategies=[full, cla:2, first]' --set data.train_path=" +
                       (dir / "corpus.txt").string() + " --set train.out_dir=" + (dir / "run").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("eval step 4 | val loss "));
  EXPECT_THAT(r.output, HasSubstr("| cla:2 "));
  EXPECT_THAT(r.output, HasSubstr("| first "));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("final \\| val loss [0-9.]+ \\| ppl [0-9.]+ \\| cla:2 [0-9.]+ \\([+-][0-9.]+%\\) \\| first"));
  const std::string metrics = testing_data::read_file_bytes(dir / "run" / "metrics.jsonl");
  EXPECT_THAT(metrics, HasSubstr("{\"step\": 8, \"val_loss\": "));
  EXPECT_THAT(metrics, HasSubstr("\"val_loss_cla:2\": "));
  EXPECT_THAT(metrics, HasSubstr("\"val_loss_first\": "));
  std::ifstream dat(dir / "run" / StrategyCurves::kData);
  std::vector<std::string> lines;
  for (std::string l; std::getline(dat, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 4u);  // header, steps 4 and 8, and the final step 12
  EXPECT_EQ(lines[0], "# step full cla:2 first");
  EXPECT_EQ(lines[3].substr(0, 3), "12 ");
  if (std::system("gnuplot --version > /dev/null 2>&1") == 0)
    EXPECT_TRUE(fs::exists(dir / "run" / StrategyCurves::kPlot)) << "gnuplot is installed but drew no plot";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvroute
