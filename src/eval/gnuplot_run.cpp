#include "eval/gnuplot_run.h"

#include "kvroute/stop_signals.h"

namespace kvroute {
namespace fs = std::filesystem;
namespace {

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

std::string gnuplot_string(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}

std::string run_gnuplot(const fs::path& dir, const std::string& script, const std::string& png) {
  std::error_code ec;
  fs::remove(dir / png, ec);
  const std::string cmd = "cd " + shell_quote(dir.string()) + " && gnuplot " + shell_quote(script) + " > gnuplot.log 2>&1";
  if (system_with_stop_signals_unblocked(cmd.c_str()) != 0 || !fs::exists(dir / png)) return "";
  fs::remove(dir / "gnuplot.log", ec);
  return (dir / png).string();
}

}  // namespace kvroute
