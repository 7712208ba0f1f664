#include "kvroute/run_log.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <iostream>
#include <sstream>

namespace kvroute {

RunLog::RunLog(const std::string& run_dir)
    : log_path_(run_dir + "/train.log"), jsonl_path_(run_dir + "/metrics.jsonl"), log_(log_path_, std::ios::app),
      jsonl_(jsonl_path_, std::ios::app), tty_(::isatty(STDOUT_FILENO) == 1) {
  if (!log_ || !jsonl_) throw std::runtime_error("cannot write logs into run directory '" + run_dir + "'");
}

void RunLog::check(const std::ofstream& out, const std::string& path, int err) {
  if (out) return;
  throw std::runtime_error("writing '" + path + "' failed: " + (err ? std::strerror(err) : "stream error") +
                           " (disk full?); stopping rather than training on without a record of the run");
}

void RunLog::line(const std::string& text) {
  if (bar_shown_) std::cout << "\r\033[K";
  bar_shown_ = false;
  std::cout << text << std::endl;
  errno = 0;
  log_ << text << std::endl;
  check(log_, log_path_, errno);
}

void RunLog::progress(const std::string& text) {
  if (!tty_) return;
  std::cout << "\r\033[K" << text << std::flush;
  bar_shown_ = true;
}

void RunLog::metrics(const std::vector<std::pair<std::string, double>>& fields,
                     const std::vector<std::pair<std::string, std::string>>& strings) {
  std::ostringstream os;
  os.precision(8);
  os << "{";
  bool first = true;
  for (const auto& [k, v] : fields) {
    os << (first ? "" : ", ") << '"' << k << "\": ";
    if (std::isfinite(v)) os << v; else os << "null";
    first = false;
  }
  for (const auto& [k, v] : strings) {
    os << (first ? "" : ", ") << '"' << k << "\": \"" << v << '"';
    first = false;
  }
  os << "}";
  errno = 0;
  jsonl_ << os.str() << std::endl;
  check(jsonl_, jsonl_path_, errno);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", bytes, units[u]);
  return buf;
}

}  // namespace kvroute
