#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "kvroute/run_log.h"

namespace kvroute {

namespace {
using clock = std::chrono::steady_clock;
double since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }
bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }
}  // namespace

std::string format_megabytes(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  return buf;
}

ByteProgress::ByteProgress(std::string label, uint64_t total_bytes)
    : label_(std::move(label)),
      total_(total_bytes),
      tty_(stdout_is_terminal()),
      start_(clock::now()),
      last_draw_(start_) {}

double ByteProgress::seconds() const { return since(start_); }

void ByteProgress::update(uint64_t done) {
  const auto now = clock::now();
  const double since_draw = std::chrono::duration<double>(now - last_draw_).count();
  if (since_draw < (tty_ ? 0.1 : plain_line_interval(seconds()))) return;
  last_draw_ = now;
  const double elapsed = seconds();
  const double rate = done / std::max(elapsed, 1e-9);
  const double eta = rate > 0 && total_ >= done ? (total_ - done) / rate : -1;
  const double frac = total_ ? std::min(1.0, double(done) / total_) : 1.0;
  char line[256];
  if (tty_) {
    const int width = 30, filled = static_cast<int>(frac * width);
    std::snprintf(line, sizeof line, "\r\033[K%s [%s%s] %s / %s  %.1f MB/s  eta %s", label_.c_str(),
                  std::string(filled, '#').c_str(), std::string(width - filled, ' ').c_str(),
                  format_megabytes(done).c_str(), format_megabytes(total_).c_str(), rate / 1e6,
                  format_duration(eta).c_str());
    std::cout << line << std::flush;
    drawn_ = true;
  } else {
    std::snprintf(line, sizeof line, "%s: %s / %s (%.0f%%), %.1f MB/s, eta %s", label_.c_str(),
                  format_megabytes(done).c_str(), format_megabytes(total_).c_str(), 100 * frac, rate / 1e6,
                  format_duration(eta).c_str());
    std::cout << line << std::endl;
  }
}

void ByteProgress::finish(const std::string& suffix) {
  const double elapsed = seconds();
  if (drawn_) std::cout << "\r\033[K";
  char line[256];
  std::snprintf(line, sizeof line, "%s: %s in %.1fs (%.1f MB/s)", label_.c_str(), format_megabytes(total_).c_str(),
                elapsed, total_ / std::max(elapsed, 1e-9) / 1e6);
  std::cout << line << suffix << std::endl;
}

ElapsedTicker::ElapsedTicker(std::string label)
    : label_(std::move(label)), tty_(stdout_is_terminal()), start_(clock::now()) {
  thread_ = std::thread([this] {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::duration<double>(tty_ ? 1.0 : plain_line_interval(since(start_))),
                         [this] { return stopping_; })) {
      const std::string elapsed = format_duration(since(start_));
      if (tty_)
        std::cout << "\r\033[K" << label_ << " ... " << elapsed << std::flush;
      else
        std::cout << label_ << " ... " << elapsed << std::endl;
    }
    if (tty_) std::cout << "\r\033[K" << std::flush;
  });
}

double ElapsedTicker::stop() {
  {
    std::lock_guard lock(mu_);
    if (seconds_ >= 0) return seconds_;
    stopping_ = true;
    seconds_ = since(start_);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  return seconds_;
}

ElapsedTicker::~ElapsedTicker() { stop(); }

}  // namespace kvroute
