// kvroute ckpt info CHECKPOINT [--verify] [--no-config]
#include <filesystem>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "kvroute/checkpoint.h"
#include "kvroute/model.h"

namespace kvroute::cli {

namespace {

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<std::size_t>(i), ",");
  return s;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string routing_text(const RoutingConfig& r) {
  std::ostringstream os;
  os << "mode " << r.mode;
  if (r.mode == "stochastic") os << ", p " << r.p << ", scheme " << r.scheme << ", one draw per " << r.granularity;
  if (r.mode == "fixed") os << ", strategy " << r.strategy;
  return os.str();
}

void print_info(const std::string& path, bool verify, bool show_config) {
  const CheckpointInfo info = read_checkpoint_info(path);
  const Config& cfg = info.config;
  const ModelConfig& m = cfg.model;
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path, ec);
  std::cout << "checkpoint  " << path << " (" << with_commas(static_cast<int64_t>(bytes)) << " bytes)\n"
            << "format      " << info.format << ", written by kvroute " << info.version << "\n"
            << "step        " << info.step << " of " << cfg.train.steps << " (train.steps)";
  if (info.format != "kvroute-checkpoint-1")
    std::cout << "; last lr " << info.state.last_lr << "; " << info.state.skipped_steps << " skipped";
  std::cout << "\n"
            << "resumable   "
            << (info.has_optimizer ? "yes: AdamW moments, AdamW step " + std::to_string(info.state.adam_step)
                                   : std::string("no: weights only (usable as model.init_from or for eval)"))
            << "\n"
            << "rng         seed " << cfg.train.seed << " (counter-based: seed and step define init, data and routes)\n";
  if (!info.state.data_loader.empty()) {
    std::cout << "data        ";
    for (std::size_t i = 0; i < info.state.data_loader.size(); ++i)
      std::cout << (i ? ", " : "") << info.state.data_loader[i].first << " " << info.state.data_loader[i].second;
    std::cout << "\n";
  }
  std::cout << "tokenizer   "
            << (info.tokenizer.name.empty() ? std::string("(not recorded)")
                                            : info.tokenizer.name + ", " + std::to_string(info.tokenizer.vocab_size) +
                                                  " tokens" +
                                                  (info.tokenizer.fingerprint.empty()
                                                       ? ""
                                                       : ", fingerprint " + info.tokenizer.fingerprint))
            << "\n"
            << "kv routing  " << routing_text(cfg.routing) << "\n"
            << "model       " << m.n_layers << " layers, d_model " << m.d_model << ", " << m.n_heads << " heads / "
            << m.n_kv_heads << " kv heads, d_ff " << m.d_ff << ", vocab " << m.vocab_size << ", context " << m.context
            << (m.tie_embeddings ? ", tied embeddings" : "") << model_features_text(m) << "\n"
            << "parameters  " << with_commas(info.num_params()) << " in " << info.tensors.size() << " tensors\n";
  std::size_t width = 0;
  for (const TensorInfo& t : info.tensors) width = std::max(width, t.name.size());
  for (const TensorInfo& t : info.tensors)
    std::cout << "  " << t.name << std::string(width + 2 - t.name.size(), ' ') << shape_text(t.shape) << "\n";
  if (verify) {
    auto backend = make_backend("cpu");
    Model model(m, backend.get());
    read_checkpoint(path, model, info.has_optimizer);  // throws on any CRC or shape problem
    std::cout << "verified    every tensor" << (info.has_optimizer ? " and AdamW moment" : "")
              << (info.format == "kvroute-checkpoint-1" ? " read back (format 1 has no checksums)\n"
                                                         : " matches its CRC-32\n");
  }
  if (show_config) {
    std::cout << "config\n";
    std::istringstream lines(info.config_yaml);
    for (std::string line; std::getline(lines, line);) std::cout << "  " << line << "\n";
  }
}

}  // namespace

void add_ckpt_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("ckpt", "Inspect checkpoints");
  cmd->require_subcommand(1);
  auto* info = cmd->add_subcommand("info", "Print a checkpoint's step, config, parameter shapes and KV routing settings");
  static std::string path;
  static bool verify = false, no_config = false;
  info->add_option("checkpoint", path, "Checkpoint file (HDF5)")->required();
  info->add_flag("--verify", verify, "Also read every tensor and check its CRC-32");
  info->add_flag("--no-config", no_config, "Leave out the embedded config");
  info->callback([] { print_info(path, verify, !no_config); });
}

}  // namespace kvroute::cli
