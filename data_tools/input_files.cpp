#include "input_files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>

#include "checkpoint/output_paths.h"
#include "kvroute/input_list.h"
#include "kvroute/shard.h"

namespace kvroute {

namespace fs = std::filesystem;

uint64_t check_input_files(const std::vector<std::string>& paths, const std::string& what) {
  if (paths.empty()) throw std::runtime_error(what + ": no input files given");
  uint64_t total = 0;
  for (const std::string& p : paths) {
    const std::string name = what + " '" + p + "'";
    std::error_code ec;
    const auto st = fs::status(p, ec);
    if (ec || !fs::exists(st)) throw std::runtime_error(name + ": no such file");
    if (fs::is_directory(st)) throw std::runtime_error(name + ": is a directory, not a text file");
    if (!fs::is_regular_file(st)) throw std::runtime_error(name + ": not a regular file");
    std::ifstream in(p, std::ios::binary);
    if (!in) throw std::runtime_error(name + ": cannot be read (" + std::strerror(errno) + ")");
    const uint64_t size = fs::file_size(p, ec);
    if (ec) throw std::runtime_error(name + ": cannot read its size (" + ec.message() + ")");
    if (size == 0) throw std::runtime_error(name + ": is empty");
    total += size;
  }
  return total;
}

std::vector<std::string> read_input_list(const std::string& list_file) {
  std::error_code ec;
  if (!fs::is_regular_file(list_file, ec))
    throw std::runtime_error("input list '" + list_file + "': no such file (one path per line expected)");
  std::ifstream in(list_file);
  if (!in) throw std::runtime_error("input list '" + list_file + "': cannot be read (" + std::strerror(errno) + ")");
  std::vector<std::string> paths;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) paths.push_back(line);
  }
  if (in.bad()) throw std::runtime_error("input list '" + list_file + "': read error");
  if (paths.empty()) throw std::runtime_error("input list '" + list_file + "': lists no files");
  return paths;
}

void check_output_dir(const std::string& out_dir, bool force, const std::string& what,
                      const std::vector<InputPath>& inputs) {
  if (out_dir.empty()) throw std::runtime_error(what + ": no output directory given (--out)");
  refuse_output_over_inputs(what, "--out", out_dir, inputs);
  for (const std::string& note : settle_interrupted_replacement(out_dir)) std::cerr << what << ": note: " << note << "\n";
  std::error_code ec;
  if (!fs::exists(out_dir, ec)) return;
  if (!fs::is_directory(out_dir, ec))
    throw std::runtime_error(what + ": output '" + out_dir + "' exists and is not a directory");
  if (!fs::is_empty(out_dir, ec) && !force)
    throw std::runtime_error(what + ": output directory '" + out_dir +
                             "' already exists and is not empty; pass --force to replace it");
}

std::vector<InputPath> input_paths(const std::vector<std::string>& paths, const std::string& role) {
  std::vector<InputPath> inputs;
  for (const std::string& p : paths) inputs.push_back({role, p});
  return inputs;
}

void build_output_dir(const std::string& out_dir, const std::function<void(const fs::path& tmp)>& fill) {
  // check_output_dir has refused an existing output without --force.
  OutputReplacement output("output", out_dir, /*force=*/true, /*directory=*/true);
  fill(output.tmp());
  output.commit();
}

uint64_t file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + path + "'");
  uint64_t h = kFnvOffset;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = fnv1a64(buf.data(), static_cast<std::size_t>(in.gcount()), h);
  }
  return h;
}

}  // namespace kvroute
