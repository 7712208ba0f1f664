// kvroute export hf: a kvroute checkpoint -> a Hugging Face model folder.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "checkpoint/durable_file.h"
#include "checkpoint/output_paths.h"
#include "kvroute/checkpoint.h"
#include "kvroute/hf_model.h"
#include "kvroute/hf_tokenizer_json.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"
#include "kvroute/model.h"
#include "kvroute/safetensors.h"
#include "kvroute/strategy.h"
#include "kvroute/tokenizer.h"

namespace kvroute {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// bos/eos ids of an imported tokenizer (generation_config.json travels with it), else -1.
std::pair<int, int> special_ids(const fs::path& tok_dir) {
  std::error_code ec;
  const fs::path gen = tok_dir / "generation_config.json";
  if (!fs::exists(gen, ec)) return {-1, -1};
  try {
    const std::string what = "'" + gen.string() + "'";
    const json j = parse_input_json(read_input_file(gen.string(), limits::kJsonFileBytes, what), what);
    auto id = [&](const char* k) {
      if (!j.contains(k)) return -1;
      const json& v = j[k].is_array() && !j[k].empty() ? j[k][0] : j[k];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= limits::kVocab) return -1;
      return static_cast<int>(v.get<int64_t>());
    };
    return {id("bos_token_id"), id("eos_token_id")};
  } catch (const std::exception&) {  // generation_config.json is optional: unreadable means none
    return {-1, -1};
  }
}

// The "kvroute" block of config.json: how the model was trained to share its cache.
std::string kvroute_block(const Config& cfg, const CheckpointInfo& info) {
  const RoutingConfig& r = cfg.routing;
  // A model trained for one fixed map serves best with it; a stochastically routed one tolerates
  // any map, and CLA with groups of 2 (half the cache) is the paper's usual operating point.
  std::string recommended = "full";
  std::string why = "trained without routing: serve with a full cache";
  if (r.mode == "fixed") {
    recommended = r.strategy;
    why = "trained with this fixed sharing map";
  } else if (r.mode == "stochastic") {
    recommended = "cla:2";
    why = "trained with stochastic routing: tolerates any map; cla:2 keeps half the cache";
  }
  const SharingStrategy s = parse_strategy(recommended, cfg.model.n_layers);
  json j = {{"version", KVROUTE_VERSION},
            {"step", info.step},
            {"routing",
             {{"mode", r.mode}, {"p", r.p}, {"scheme", r.scheme}, {"granularity", r.granularity},
              {"strategy", r.strategy}, {"group", r.group}}},
            {"recommended_sharing",
             {{"strategy", recommended}, {"source_layer", s.src}, {"kv_fraction", s.kv_fraction()}, {"why", why}}},
            {"note", "layer l reads the K/V of layer source_layer[l]; transformers ignores this block"}};
  return j.dump();
}

}  // namespace

std::vector<std::string> write_hf_fast_tokenizer(const std::string& spec, const fs::path& dir, int model_max_length) {
  const HfFastTokenizer fast = hf_fast_tokenizer(spec, model_max_length);
  std::vector<std::string> files;
  if (spec != "byte") {
    fs::copy_file(fs::path(spec) / "tokenizer.model", dir / "tokenizer.model", fs::copy_options::overwrite_existing);
    files.push_back("tokenizer.model");
  }
  write_file_atomically(dir / "tokenizer.json", fast.tokenizer_json);
  write_file_atomically(dir / "tokenizer_config.json", fast.tokenizer_config_json);
  files.push_back("tokenizer.json");
  files.push_back("tokenizer_config.json");
  return files;
}

std::vector<std::string> export_hf_tokenizer(const std::string& spec, const std::string& out, int model_max_length,
                                             bool force) {
  if (spec != "byte") refuse_output_over_inputs("export", "--out", out, {{"the tokenizer", spec}});
  OutputReplacement output("export", out, force, /*directory=*/true);
  for (const std::string& n : output.notes()) std::cerr << "note: " << n << "\n";
  const std::vector<std::string> files = write_hf_fast_tokenizer(spec, output.tmp(), model_max_length);
  output.commit();
  return files;
}

HfExportReport export_hf(const HfExportOptions& o) {
  if (o.dtype != "bf16" && o.dtype != "fp32")
    throw std::invalid_argument("export: --dtype must be bf16 or fp32, not '" + o.dtype + "'");
  std::error_code ec;
  refuse_output_over_inputs("export", "--out", o.out, {{"the checkpoint", o.checkpoint}});
  const CheckpointInfo info = read_checkpoint_info(o.checkpoint);
  const Config& cfg = info.config;
  // Its tokenizer folder is read too (copied, or converted).
  if (!info.tokenizer.name.empty() && cfg.data.tokenizer != "byte")
    refuse_output_over_inputs("export", "--out", o.out, {{"the checkpoint's tokenizer", cfg.data.tokenizer}});
  OutputReplacement output("export", o.out, o.force, /*directory=*/true);
  const fs::path tmp = output.tmp();
  HfExportReport report;
  report.architecture = o.architecture.empty() ? hf_architecture_for(cfg.model) : o.architecture;

  const std::vector<ParamTensor> layout = parameter_layout(cfg.model);
  const CheckpointContents c = read_checkpoint(o.checkpoint, cfg.model, layout, /*with_optimizer=*/false);

  // Tokenizer: an imported (Hugging Face) one is copied back; kvroute's own are written in HF form.
  // A checkpoint that records no tokenizer (imported from a folder without one) exports none.
  const std::string spec = info.tokenizer.name.empty() ? "" : cfg.data.tokenizer;
  int bos = -1, eos = -1;
  auto add_file = [&](const std::string& name) { report.files.push_back(name); };
  if (spec.empty()) {
    report.notes.push_back("the checkpoint records no tokenizer: no tokenizer files written");
  } else if (spec == "byte") {
    for (const std::string& f : write_hf_fast_tokenizer(spec, tmp, cfg.model.context)) add_file(f);
    report.notes.push_back("byte tokenizer written as a byte-level BPE without merges (ids = byte values)");
  } else if (fs::is_directory(spec, ec)) {
    const bool from_hf = fs::exists(fs::path(spec) / "tokenizer.json", ec) ||
                         fs::exists(fs::path(spec) / "tokenizer_config.json", ec);
    if (from_hf) {  // an imported tokenizer goes out as it came
      std::vector<std::string> names = hf_tokenizer_files(spec);
      if (fs::exists(fs::path(spec) / "generation_config.json", ec)) names.push_back("generation_config.json");
      for (const std::string& name : names) {
        if (name == "tokenizer.vocab" || name == "tokenizer.yaml") continue;  // kvroute's own notes, not HF files
        fs::copy_file(fs::path(spec) / name, tmp / name);
        add_file(name);
      }
      std::tie(bos, eos) = special_ids(spec);
    } else {
      // kvroute's SentencePiece tokenizers: ids 0, 1, 2 are <unk>, <s>, </s> (tokenizer.h).
      bos = 1;
      eos = 2;
      for (const std::string& f : write_hf_fast_tokenizer(spec, tmp, cfg.model.context)) add_file(f);
      report.notes.push_back("tokenizer written as tokenizer.json (PreTrainedTokenizerFast) beside tokenizer.model");
    }
  } else {
    report.notes.push_back("tokenizer '" + spec + "' of the checkpoint is not found: no tokenizer files written");
  }

  std::vector<NamedTensor> tensors;
  std::vector<std::string> names;
  for (const ParamTensor& t : layout) {
    NamedTensor n;
    n.name = hf_tensor_name(t.name);
    n.shape.assign(t.shape.begin(), t.shape.end());
    n.data = c.params.data() + t.offset;
    tensors.push_back(std::move(n));
  }
  // transformers refuses a safetensors file without format metadata.
  write_safetensors((tmp / "model.safetensors").string(), tensors, o.dtype == "bf16" ? "BF16" : "F32",
                    {{"format", "pt"}});
  add_file("model.safetensors");
  write_file_atomically(tmp / "config.json", hf_config_json(cfg.model, report.architecture, o.dtype == "bf16" ? "bfloat16" : "float32",
                                                 bos, eos, kvroute_block(cfg, info)));
  add_file("config.json");
  for (const std::string& f : report.files) report.bytes += static_cast<double>(fs::file_size(tmp / f));
  output.commit();
  report.notes.insert(report.notes.begin(), output.notes().begin(), output.notes().end());
  return report;
}

}  // namespace kvroute
