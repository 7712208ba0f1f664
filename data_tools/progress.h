// Progress of a long data job over a known number of bytes, on stdout: a bar
// redrawn in place on a terminal, a plain line every few seconds otherwise, and
// a summary line at the end.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace kvroute {

class ByteProgress {
 public:
  ByteProgress(std::string label, uint64_t total_bytes);
  // Cheap to call often: redraws at most 10 times a second (a terminal) or every
  // plain_line_interval seconds (a pipe or file).
  void update(uint64_t done_bytes);
  // Prints "<label>: 4.2 MB in 1.3s (3.2 MB/s)<suffix>".
  void finish(const std::string& suffix = "");
  double seconds() const;

 private:
  std::string label_;
  uint64_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool drawn_ = false;
};

// Prints "<label> ... 12s" while a job without progress reports runs (a terminal:
// redrawn every second; otherwise a line every plain_line_interval seconds).
class ElapsedTicker {
 public:
  explicit ElapsedTicker(std::string label);
  ~ElapsedTicker();
  double stop();  // seconds elapsed; idempotent

 private:
  std::string label_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  double seconds_ = -1;
  std::thread thread_;
};

std::string format_megabytes(uint64_t bytes);  // "4.2 MB" (10^6 bytes)

// Seconds between plain (non-terminal) progress lines: 5 in the first minute, then 30.
inline double plain_line_interval(double elapsed) { return elapsed < 60 ? 5 : 30; }

}  // namespace kvroute
