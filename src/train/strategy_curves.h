// Validation loss per sharing strategy during training (train.eval_strategies): one row per
// evaluation, kept in the run directory as val_loss_by_strategy.dat and drawn by gnuplot into
// val_loss_by_strategy.png, one line per strategy against the step.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace kvroute {

class StrategyCurves {
 public:
  // Picks up the rows of an earlier run in dir (a resumed run) when they are of the same strategies.
  StrategyCurves(std::filesystem::path dir, std::vector<std::string> names);

  // Adds one evaluation (a loss per name), dropping earlier rows at or after `step` (a run resumed
  // from a checkpoint re-evaluates them); rewrites the .dat atomically and redraws the plot.
  // Returns the PNG's path, or "" when gnuplot is not there.
  std::string add(long step, const std::vector<double>& losses);

  const std::vector<std::pair<long, std::vector<double>>>& rows() const { return rows_; }
  static constexpr const char* kData = "val_loss_by_strategy.dat";
  static constexpr const char* kPlot = "val_loss_by_strategy.png";

 private:
  std::string header() const;
  std::filesystem::path dir_;
  std::vector<std::string> names_;
  std::vector<std::pair<long, std::vector<double>>> rows_;
};

}  // namespace kvroute
