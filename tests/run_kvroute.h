// Runs the kvroute binary under test (or mpirun over it) as a subprocess, for the
// command-line, checkpoint and distributed tests.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace kvroute::testing_cli {

struct Result {
  int status = -1;     // exit code, or 128 + signal
  std::string output;  // stdout + stderr
};

// Runs shell text COMMAND, its stderr merged into its stdout.
inline Result run_shell(const std::string& command) {
  const std::string cmd = command + " 2>&1";
  Result r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(pipe);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// Runs `kvroute ARGS` through the shell (ARGS is shell text).
inline Result run(const std::string& args) { return run_shell(std::string(KVROUTE_BINARY) + " " + args); }

// The argv of `kvroute ARGS`.
inline std::vector<std::string> kvroute_argv(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {KVROUTE_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

struct SpawnOptions {
  // > 0: the child may write no file beyond this many bytes, so the write fails with
  // EFBIG as on a full disk (kvroute ignores SIGXFSZ itself).
  rlim_t fsize_limit = 0;
  // The child leads a new process group, so one kill(-pid) reaches it and its
  // children (mpirun and its ranks).
  bool new_process_group = false;
  // argv[0] is looked up on PATH (execvp) rather than taken as a path (execv).
  bool search_path = false;
};

// Starts argv in the background, without a shell, with stdout and stderr into
// log_path; returns the child's pid, to be reaped with wait_for.
inline pid_t spawn(const std::vector<std::string>& argv, const std::filesystem::path& log_path,
                   SpawnOptions options = {}) {
  std::vector<std::string> argv_s = argv;
  std::vector<char*> argv_c;
  for (std::string& a : argv_s) argv_c.push_back(a.data());
  argv_c.push_back(nullptr);
  const std::string log = log_path.string();
  const pid_t pid = ::fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    if (options.new_process_group) ::setpgid(0, 0);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) ::dup2(fd, 1), ::dup2(fd, 2);
    if (options.fsize_limit > 0) {
      struct rlimit rl {options.fsize_limit, options.fsize_limit};
      ::setrlimit(RLIMIT_FSIZE, &rl);
    }
    if (options.search_path) {
      ::execvp(argv_c[0], argv_c.data());
    } else {
      ::execv(argv_c[0], argv_c.data());
    }
    ::_exit(127);
  }
  return pid;
}

constexpr int kTimedOut = -1;

// Waits for a child from spawn: its exit code, or 128 + signal. With timeout_s > 0
// a child still running after that long is killed with SIGKILL (its whole process
// group when it leads one: SpawnOptions::new_process_group), reaped, and kTimedOut
// returned; with no timeout this blocks until the child ends.
inline int wait_for(pid_t pid, double timeout_s = 0) {
  int st = 0;
  if (timeout_s <= 0) {
    ::waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  for (;;) {
    if (::waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (std::chrono::duration<double>(clock::now() - t0).count() > timeout_s) {
      ::kill(::getpgid(pid) == pid ? -pid : pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return kTimedOut;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// step -> exact loss text ("loss_hex") from a run directory's metrics.jsonl; a later line
// for a step (a rerun after a resume) replaces an earlier one.
inline std::map<long, std::string> losses_by_step(const std::filesystem::path& run_dir) {
  std::map<long, std::string> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto hex = line.find("\"loss_hex\": \"");
    const auto step = line.find("\"step\": ");
    if (hex == std::string::npos || step == std::string::npos) continue;
    const auto start = hex + 13;
    out[std::stol(line.substr(step + 8))] = line.substr(start, line.find('"', start) - start);
  }
  return out;
}

}  // namespace kvroute::testing_cli
