#include "kvroute/stop_signals.h"

#include <pthread.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

namespace kvroute {

namespace {

std::atomic<int> g_scopes{0};    // live StopSignals objects
std::atomic<int> g_received{0};  // the first stop signal in the current scope
std::mutex g_mutex;              // the repeat bookkeeping below (signal thread and StopSignals)
int g_repeats = 0;
std::chrono::steady_clock::time_point g_last_repeat;

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

void say(const std::string& text) {
  const std::string line = "kvroute: " + text + "\n";
  // One write(2): the line is not interleaved with the run log's lines.
  [[maybe_unused]] const ssize_t n = ::write(2, line.data(), line.size());
}

// Ends the process with sig's default action (terminate), from this thread: the
// signal is unblocked only here, and no handler runs anywhere.
[[noreturn]] void terminate_with(int sig) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  ::pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
  ::raise(sig);
  ::_exit(128 + sig);  // not reached
}

void receive_forever() {
  const sigset_t set = stop_set();
  for (;;) {
    int sig = 0;
    if (::sigwait(&set, &sig) != 0) continue;
    std::unique_lock lock(g_mutex);
    // Outside a scope the default action, unless a stop is under way: the run that was asked
    // to stop may be past its scope, finishing (a late repeat is still a repeat).
    if (g_scopes.load() == 0 && g_received.load() == 0) {
      lock.unlock();
      terminate_with(sig);
    }
    int expected = 0;
    if (g_received.compare_exchange_strong(expected, sig)) {  // the first: the loop stops after its step
      say(std::string(StopSignals::name(sig)) + " received: stopping after the current step, with a checkpoint");
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    const bool soon_after_repeat =
        g_repeats > 0 && std::chrono::duration<double>(now - g_last_repeat).count() < StopSignals::kExitWindowSeconds;
    if (soon_after_repeat) {
      say(std::string(StopSignals::name(sig)) + " received a third time: exiting now, without the checkpoint of "
          "this step; the last complete checkpoint is kept (checkpoint writes are atomic)");
      lock.unlock();
      terminate_with(sig);
    }
    ++g_repeats;
    g_last_repeat = now;
    char window[16];
    std::snprintf(window, sizeof window, "%g", StopSignals::kExitWindowSeconds);
    say(std::string(StopSignals::name(sig)) + " received again: already stopping (finishing the step and writing "
        "its checkpoint); send it once more within " + window + " s to exit at once without that checkpoint");
  }
}

}  // namespace

void start_signal_thread() {
  static std::once_flag once;
  std::call_once(once, [] {
    ::signal(SIGXFSZ, SIG_IGN);  // writes past ulimit -f fail with EFBIG instead of killing the process
    const sigset_t set = stop_set();
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread(receive_forever).detach();
  });
}

int system_with_stop_signals_unblocked(const char* command) {
  // Only the child gets them unblocked and at their default action: were they unblocked in
  // this thread too, a stop signal arriving meanwhile (after a run's `final |` line, while
  // gnuplot draws) could be delivered here and end the process before its last checkpoint
  // and model.h5; blocked here, the receiving thread takes it.
  sigset_t mask;
  ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  sigdelset(&mask, SIGINT);
  sigdelset(&mask, SIGTERM);
  const sigset_t defaults = stop_set();
  posix_spawnattr_t attr;
  ::posix_spawnattr_init(&attr);
  ::posix_spawnattr_setsigmask(&attr, &mask);
  ::posix_spawnattr_setsigdefault(&attr, &defaults);
  ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  const char* argv[] = {"sh", "-c", command, nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, "/bin/sh", nullptr, &attr, const_cast<char* const*>(argv), environ);
  ::posix_spawnattr_destroy(&attr);
  if (rc != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return status;
}

StopSignals::StopSignals() {
  start_signal_thread();
  std::lock_guard lock(g_mutex);
  if (g_scopes.fetch_add(1) == 0) {
    g_received = 0;
    g_repeats = 0;
  }
}

StopSignals::~StopSignals() {
  std::lock_guard lock(g_mutex);
  g_scopes.fetch_sub(1);
}

int StopSignals::received() const { return g_received.load(); }

const char* StopSignals::name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal"; }

}  // namespace kvroute
