// Runs the kvroute binary under test as a subprocess, for the command-line tests.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace kvroute::testing_cli {

struct Result {
  int status = -1;     // exit code, or 128 + signal
  std::string output;  // stdout + stderr
};

// Runs `kvroute ARGS` through the shell (ARGS is shell text).
inline Result run(const std::string& args) {
  const std::string cmd = std::string(KVROUTE_BINARY) + " " + args + " 2>&1";
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

}  // namespace kvroute::testing_cli
