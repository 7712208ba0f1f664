// kvroute import hf: a Hugging Face model folder -> a kvroute checkpoint.
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>

#include "checkpoint/output_paths.h"
#include "hf/import_outputs.h"
#include "kvroute/checkpoint.h"
#include "kvroute/hf_model.h"
#include "kvroute/model.h"
#include "kvroute/safetensors.h"
#include "kvroute/tokenizer.h"

namespace kvroute {
namespace fs = std::filesystem;

namespace {

// The folder's safetensors files and which file holds each tensor.
struct WeightFiles {
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files;  // by path
  std::map<std::string, const SafetensorsFile*> by_tensor;        // tensor name -> its file
};

WeightFiles open_weight_files(const std::string& dir) {
  WeightFiles w;
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::error_code ec;
  std::map<std::string, std::string> where;  // tensor -> file path
  if (fs::exists(index, ec)) {
    where = read_safetensors_index(index.string());
  } else if (fs::exists(single, ec)) {
    w.files[single.string()] = std::make_unique<SafetensorsFile>(single.string());
    for (const SafetensorsEntry& e : w.files[single.string()]->tensors()) w.by_tensor[e.name] = w.files[single.string()].get();
    return w;
  } else {
    if (fs::exists(fs::path(dir) / "pytorch_model.bin", ec) || fs::exists(fs::path(dir) / "pytorch_model.bin.index.json", ec))
      throw std::runtime_error("Hugging Face model folder '" + dir +
                               "' holds PyTorch pickle weights (pytorch_model.bin), which kvroute does not read; "
                               "save the model with safetensors (save_pretrained(..., safe_serialization=True))");
    throw std::runtime_error("Hugging Face model folder '" + dir +
                             "' has neither model.safetensors nor model.safetensors.index.json");
  }
  for (const auto& [tensor, file] : where) {
    auto& f = w.files[file];
    if (!f) f = std::make_unique<SafetensorsFile>(file);
    if (!f->find(tensor))
      throw std::runtime_error("'" + index.string() + "' says tensor '" + tensor + "' is in '" + file +
                               "', but that file does not hold it");
    w.by_tensor[tensor] = f.get();
  }
  // A shard may hold tensors the index does not name: they are unexpected all the same.
  for (const auto& [path, f] : w.files)
    for (const SafetensorsEntry& e : f->tensors())
      if (!w.by_tensor.count(e.name)) w.by_tensor[e.name] = f.get();
  return w;
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// Tokenizer files of a Hugging Face folder, copied as they are; generation_config.json too, for
// the bos/eos ids an export writes back.
std::vector<std::string> tokenizer_files(const std::string& dir) {
  std::vector<std::string> files = hf_tokenizer_files(dir);
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "generation_config.json", ec)) files.push_back("generation_config.json");
  return files;
}

bool has_tokenizer(const std::string& dir) {
  std::error_code ec;
  return fs::exists(fs::path(dir) / "tokenizer.json", ec) || fs::exists(fs::path(dir) / "tokenizer.model", ec);
}

}  // namespace

std::vector<float> read_hf_weights(const std::string& dir, const HfModelConfig& config, std::vector<std::string>* notes,
                                   double* bytes_read) {
  const std::vector<ParamTensor> layout = parameter_layout(config.model);
  WeightFiles files = open_weight_files(dir);
  std::set<std::string> unused;
  for (const auto& [name, f] : files.by_tensor) unused.insert(name);
  // Every check before any data is read: a bad folder fails in a second, not after minutes of reading.
  for (const ParamTensor& t : layout) {
    const std::string hf = hf_tensor_name(t.name);
    const auto it = files.by_tensor.find(hf);
    if (it == files.by_tensor.end())
      throw std::runtime_error("Hugging Face model folder '" + dir + "' lacks tensor '" + hf + "' (" +
                               config.architecture + " with this config.json needs it)");
    const SafetensorsEntry* e = it->second->find(hf);
    const std::vector<int64_t> want(t.shape.begin(), t.shape.end());
    if (e->shape != want)
      throw std::runtime_error("'" + it->second->path() + "': tensor '" + hf + "' is " + shape_text(e->shape) +
                               ", config.json implies " + shape_text(want));
    if (e->dtype != "F32" && e->dtype != "BF16" && e->dtype != "F16")
      throw std::runtime_error("'" + it->second->path() + "': tensor '" + hf + "' is " + e->dtype +
                               "; only F32, BF16 and F16 weights are supported");
    unused.erase(hf);
  }
  const bool tied_head_saved = config.model.tie_embeddings && unused.count("lm_head.weight");
  unused.erase("lm_head.weight");
  // rotary_emb.inv_freq buffers (older saves) carry no weights: RoPE is computed from config.json.
  for (auto it = unused.begin(); it != unused.end();) it = it->ends_with("rotary_emb.inv_freq") ? unused.erase(it) : ++it;
  if (!unused.empty())
    throw std::runtime_error("'" + files.by_tensor.at(*unused.begin())->path() + "': tensor '" + *unused.begin() +
                             "' has no place in a " + config.architecture +
                             " model of this config.json (a feature kvroute lacks?)");

  std::size_t n = 0;
  for (const ParamTensor& t : layout) n += t.numel;
  std::vector<float> params;
  try {
    params.resize(n);
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("Hugging Face model folder '" + dir + "': its " + std::to_string(n) +
                             " parameters (" + std::to_string(n * 4 >> 20) + " MiB in fp32) do not fit in memory");
  }
  for (const ParamTensor& t : layout) {
    const std::string hf = hf_tensor_name(t.name);
    const SafetensorsFile* f = files.by_tensor.at(hf);
    f->read_f32_into(hf, params.data() + t.offset, t.numel);
    f->drop_pages(hf);
    if (bytes_read) *bytes_read += static_cast<double>(f->find(hf)->end - f->find(hf)->begin);
  }
  if (tied_head_saved) {
    // A tied model's file may still hold the head; it must be the embedding, or tying it would change the model.
    const SafetensorsFile* f = files.by_tensor.at("lm_head.weight");
    const std::vector<float> head = f->read_f32("lm_head.weight");
    const ParamTensor& embed = layout.front();
    if (head.size() != embed.numel || !std::equal(head.begin(), head.end(), params.begin()))
      throw std::runtime_error("'" + f->path() + "': lm_head.weight differs from model.embed_tokens.weight, but "
                               "config.json says tie_word_embeddings: true");
    if (notes) notes->push_back("lm_head.weight equals the embedding (tie_word_embeddings: true): stored once");
  }
  return params;
}

HfImportReport import_hf(const HfImportOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  HfImportReport report;
  const ImportOutputs outputs = check_import_outputs(options, has_tokenizer(options.dir));
  report.config = read_hf_config(options.dir);
  report.notes = outputs.notes;

  // The tokenizer first: it is small, and its problems should show before minutes of reading weights.
  TokenizerIdentity tokenizer;
  // The tokenizer copy, renamed into place only once the checkpoint is written.
  std::optional<OutputReplacement> tok_out;
  const std::string& tok_dir = outputs.tokenizer_dir;
  if (has_tokenizer(options.dir)) {
    tok_out.emplace("import", tok_dir, options.force, /*directory=*/true);
    report.notes.insert(report.notes.end(), tok_out->notes().begin(), tok_out->notes().end());
    const std::string tmp = tok_out->tmp().string();
    for (const std::string& name : tokenizer_files(options.dir))
      fs::copy_file(fs::path(options.dir) / name, fs::path(tmp) / name);
    std::unique_ptr<Tokenizer> tok;
    try {
      tok = load_tokenizer(tmp);
    } catch (const std::exception& e) {
      throw std::runtime_error("import: the tokenizer of '" + options.dir + "' cannot be used: " + e.what());
    }
    if (tok->vocab_size() > report.config.model.vocab_size)
      throw std::runtime_error("import: the tokenizer of '" + options.dir + "' has " + std::to_string(tok->vocab_size()) +
                               " ids, more than config.json's vocab_size " +
                               std::to_string(report.config.model.vocab_size));
    report.tokenizer_dir = fs::absolute(tok_dir).string();
    tokenizer = TokenizerIdentity{report.tokenizer_dir, tok->vocab_size(), fingerprint_hex(tok->fingerprint())};
  } else {
    report.notes.push_back("'" + options.dir + "' has no tokenizer files (tokenizer.json or tokenizer.model): "
                           "the checkpoint records no tokenizer");
  }

  // A folder whose weights fail leaves nothing behind: no checkpoint, no tokenizer folder
  // (tok_out removes its temporary folder unless committed).
  const std::vector<float> params = read_hf_weights(options.dir, report.config, &report.notes, &report.bytes_read);
  Config cfg;
  cfg.model = report.config.model;
  if (!report.tokenizer_dir.empty()) cfg.data.tokenizer = report.tokenizer_dir;
  // A long-context model's context stays as config.json says; training windows are set by train.seq_len.
  if (cfg.train.seq_len > cfg.model.context) cfg.train.seq_len = cfg.model.context;
  validate(cfg);
  TrainingState state;
  state.seed = cfg.train.seed;
  const std::vector<ParamTensor> layout = parameter_layout(cfg.model);
  save_checkpoint(options.out, layout, params, cfg, state, tokenizer);
  if (tok_out) tok_out->commit();
  report.tensors = static_cast<long>(layout.size());
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace kvroute
