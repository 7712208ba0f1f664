// Preemption: while a StopSignals object lives, SIGINT and SIGTERM only set a
// flag that the training loop polls between steps (it then finishes the step,
// writes a checkpoint and returns). Each handler is one-shot (SA_RESETHAND): a
// second Ctrl-C terminates at once, which is safe because checkpoint writes are
// atomic. The previous handlers come back when the object is destroyed.
#pragma once

#include <csignal>

namespace kvroute {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // The signal received (SIGINT or SIGTERM), or 0.
  int received() const;
  static const char* name(int sig);

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

}  // namespace kvroute
