// Stop signals (SIGINT, SIGTERM) without a signal handler.
//
// A handler runs on whichever thread the kernel picks, which may be a compute thread
// inside oneDNN's AVX-512 JIT sgemm: that kernel uses the stack pointer register as a
// general register, so the signal frame is written into the heap (a oneDNN bug fixed
// after the 2.6 series). So no handler is ever installed for them:
// start_signal_thread(), called first thing in main() while the process still has one
// thread, blocks SIGINT and SIGTERM in that thread, so every thread started later
// (OpenMP, oneDNN, MPI, HDF5) inherits the blocked mask, and starts one thread that
// receives them with sigwait(). It also ignores SIGXFSZ, so a write beyond the file
// size limit (ulimit -f) fails with EFBIG and is reported like a full disk instead of
// killing the process mid-write.
//
// While a StopSignals object lives (the training loop), the first SIGINT or SIGTERM only
// sets a flag that the loop polls between steps (it then finishes the step, writes a
// checkpoint and returns). A repeated signal (GNU `timeout` signals the process and its
// group, a user presses Ctrl-C twice) is reported and otherwise ignored, so the
// checkpoint in progress is written; a further one within kExitWindowSeconds of the
// previous repeat ends the process at once, saying so (checkpoint writes are atomic:
// the last complete checkpoint is kept). Outside a StopSignals scope, a stop signal ends
// the process with the signal's default action, as if nothing had been blocked, unless a
// stop was requested in an earlier scope (the process is then shutting down after it).
#pragma once

#include <csignal>

namespace kvroute {

// Idempotent. Must run before any other thread exists for the guarantee above; a later
// call (a library user, a test binary) still works for the calling thread and the
// threads it starts afterwards.
void start_signal_thread();

// std::system(command) (through /bin/sh -c; returns the wait status, -1 if it cannot run)
// with SIGINT and SIGTERM unblocked and at their default action in the child (a blocked
// mask survives exec, and the child would ignore a stop request). The calling thread keeps
// them blocked, so one arriving meanwhile is taken by the receiving thread as any other.
int system_with_stop_signals_unblocked(const char* command);

class StopSignals {
 public:
  static constexpr double kExitWindowSeconds = 5.0;
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  // The first stop signal received (SIGINT or SIGTERM), or 0.
  int received() const;
  static const char* name(int sig);
};

}  // namespace kvroute
