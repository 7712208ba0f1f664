#include "train/strategy_curves.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "checkpoint/durable_file.h"
#include "eval/gnuplot_run.h"

namespace kvroute {
namespace fs = std::filesystem;

StrategyCurves::StrategyCurves(fs::path dir, std::vector<std::string> names)
    : dir_(std::move(dir)), names_(std::move(names)) {
  if (names_.empty()) throw std::invalid_argument("StrategyCurves: no strategies");
  std::ifstream in(dir_ / kData);
  std::string line;
  if (!std::getline(in, line) || line != header()) return;  // none yet, or other strategies: start afresh
  while (std::getline(in, line)) {
    std::istringstream row(line);
    long step = 0;
    std::vector<double> losses(names_.size());
    if (!(row >> step)) continue;
    bool complete = true;
    for (double& l : losses) complete = complete && static_cast<bool>(row >> l);
    if (complete) rows_.emplace_back(step, losses);
  }
}

std::string StrategyCurves::header() const {
  std::string h = "# step";
  for (const std::string& n : names_) h += " " + n;
  return h;
}

std::string StrategyCurves::add(long step, const std::vector<double>& losses) {
  if (losses.size() != names_.size())
    throw std::invalid_argument("StrategyCurves::add: " + std::to_string(losses.size()) + " losses for " +
                                std::to_string(names_.size()) + " strategies");
  while (!rows_.empty() && rows_.back().first >= step) rows_.pop_back();
  rows_.emplace_back(step, losses);

  std::ostringstream dat;
  dat << header() << "\n";
  dat.precision(6);
  for (const auto& [s, ls] : rows_) {
    dat << s;
    for (double l : ls) dat << " " << std::fixed << l;
    dat << "\n";
  }
  write_file_atomically(dir_ / kData, dat.str());

  std::ostringstream gp;
  gp << "set terminal pngcairo size 900,600 noenhanced\nset output '" << kPlot << "'\n"
     << "set title 'validation loss per KV sharing strategy during training'\n"
     << "set xlabel 'step'\nset ylabel 'validation loss'\nset grid\nset key top right\n"
     << "plot ";
  for (std::size_t i = 0; i < names_.size(); ++i)
    gp << (i ? ", \\\n     " : "") << "'" << kData << "' using 1:" << i + 2 << " with linespoints lw 2 pt 7 title "
       << gnuplot_string(names_[i]);
  gp << "\n";
  write_file_atomically(dir_ / "val_loss_by_strategy.gp", gp.str());
  return run_gnuplot(dir_, "val_loss_by_strategy.gp", kPlot);
}

}  // namespace kvroute
