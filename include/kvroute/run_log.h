// Run-directory logging: each line goes to stdout and <run_dir>/train.log;
// metrics go to <run_dir>/metrics.jsonl, one JSON object per line. A failed write to
// either file (a full disk) throws std::runtime_error naming the file and the reason.
#pragma once

#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace kvroute {

class RunLog {
 public:
  explicit RunLog(const std::string& run_dir);
  void line(const std::string& text);                 // stdout + train.log
  void progress(const std::string& text);             // a \r bar, only when stdout is a terminal
  void metrics(const std::vector<std::pair<std::string, double>>& fields,
               const std::vector<std::pair<std::string, std::string>>& strings = {});
  bool is_terminal() const { return tty_; }

 private:
  static void check(const std::ofstream& out, const std::string& path, int err);
  std::string log_path_, jsonl_path_;
  std::ofstream log_, jsonl_;
  bool tty_ = false;
  bool bar_shown_ = false;
};

std::string format_duration(double seconds);
// "1.5 KiB", "330.1 MiB": one decimal, binary units up to TiB.
std::string human_bytes(double bytes);

}  // namespace kvroute
