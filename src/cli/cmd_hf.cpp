// kvroute import hf DIR --out model.h5, kvroute export hf CKPT --out DIR, kvroute export hf-tokenizer TOK --out DIR
#include <sys/resource.h>

#include <cstdio>
#include <iomanip>
#include <iostream>

#include "commands.h"
#include "kvroute/hf_model.h"

namespace kvroute::cli {

namespace {

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

void run_import(const HfImportOptions& o) {
  const HfImportReport r = import_hf(o);
  const ModelConfig& m = r.config.model;
  char eps[32];  // %g: 1e-06, where the fixed format below would print 0.0
  std::snprintf(eps, sizeof eps, "%g", m.norm_eps);
  std::cout << std::fixed << std::setprecision(1) << "imported " << r.config.architecture << " from " << o.dir << "\n"
            << "  model      " << m.n_layers << " layers, d_model " << m.d_model << ", " << m.n_heads << " heads / "
            << m.n_kv_heads << " kv heads, head_dim " << (m.head_dim ? m.head_dim : m.d_model / m.n_heads) << ", d_ff "
            << m.d_ff << ", vocab " << m.vocab_size << ", context " << m.context << "\n"
            << "  features   rope_theta " << m.rope_theta << (m.rope_scaling != "none" ? ", rope " + m.rope_scaling : "")
            << ", rms_norm_eps " << eps << (m.qkv_bias ? ", q/k/v biases" : "") << (m.qk_norm ? ", q/k norm" : "")
            << (m.tie_embeddings ? ", tied head" : ", untied head") << "\n"
            << "  weights    " << r.tensors << " tensors, " << r.bytes_read / (1 << 20) << " MiB read ("
            << (r.config.dtype.empty() ? "dtype not stated" : r.config.dtype) << ") -> fp32\n"
            << "  tokenizer  " << (r.tokenizer_dir.empty() ? "(none)" : r.tokenizer_dir) << "\n"
            << "  wrote      " << o.out << " in " << r.seconds << " s, peak memory " << peak_rss_mib() << " MiB\n";
  for (const std::string& n : r.notes) std::cout << "  note: " << n << "\n";
}

void run_export(const HfExportOptions& o) {
  const HfExportReport r = export_hf(o);
  std::cout << std::fixed << std::setprecision(1) << "exported " << o.checkpoint << " as " << r.architecture << " ("
            << o.dtype << ") to " << o.out << ": ";
  for (std::size_t i = 0; i < r.files.size(); ++i) std::cout << (i ? ", " : "") << r.files[i];
  std::cout << "; " << r.bytes / (1 << 20) << " MiB\n";
  for (const std::string& n : r.notes) std::cout << "  note: " << n << "\n";
}

}  // namespace

void add_hf_commands(CLI::App& app) {
  auto* imp = app.add_subcommand("import", "Bring models from other frameworks into kvroute");
  imp->require_subcommand(1);
  auto* imp_hf = imp->add_subcommand(
      "hf", "A Hugging Face model folder (Llama, Mistral, Qwen2, Qwen3; safetensors) -> a kvroute checkpoint");
  static HfImportOptions io;
  imp_hf->add_option("dir", io.dir, "The model folder: config.json, *.safetensors, tokenizer files")->required();
  imp_hf->add_option("--out", io.out, "Checkpoint to write (e.g. model.h5)")->required();
  imp_hf->add_option("--tokenizer-out", io.tokenizer_out,
                     "Folder for the tokenizer files (default: <out without .h5>-tokenizer)");
  imp_hf->add_flag("--force", io.force, "Replace existing outputs");
  imp_hf->callback([] { run_import(io); });

  auto* exp = app.add_subcommand("export", "Write kvroute checkpoints in other frameworks' formats");
  exp->require_subcommand(1);
  auto* exp_hf = exp->add_subcommand("hf", "A kvroute checkpoint -> a Hugging Face model folder");
  static HfExportOptions eo;
  exp_hf->add_option("checkpoint", eo.checkpoint, "Checkpoint file (HDF5)")->required();
  exp_hf->add_option("--out", eo.out, "Folder to write")->required();
  exp_hf->add_option("--dtype", eo.dtype, "Weights in the safetensors file")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  exp_hf->add_option("--arch", eo.architecture,
                     "Architecture for config.json (default: Qwen3 with q/k norm, Qwen2 with q/k/v biases, else Llama)")
      ->check(CLI::IsMember({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}));
  exp_hf->add_flag("--force", eo.force, "Replace an existing folder");
  exp_hf->callback([] { run_export(eo); });

  auto* exp_tok = exp->add_subcommand(
      "hf-tokenizer", "A kvroute tokenizer -> tokenizer.json + tokenizer_config.json that transformers loads");
  static std::string tok_spec, tok_out;
  static int tok_max_length = 2048;
  static bool tok_force = false;
  exp_tok->add_option("tokenizer", tok_spec, "\"byte\" or a directory written by `kvroute data tokenizer`")->required();
  exp_tok->add_option("--out", tok_out, "Folder to write")->required();
  exp_tok->add_option("--model-max-length", tok_max_length, "model_max_length in tokenizer_config.json")
      ->capture_default_str();
  exp_tok->add_flag("--force", tok_force, "Replace an existing folder");
  exp_tok->callback([] {
    const std::vector<std::string> files = export_hf_tokenizer(tok_spec, tok_out, tok_max_length, tok_force);
    std::cout << "exported tokenizer " << tok_spec << " to " << tok_out << ":";
    for (const std::string& f : files) std::cout << " " << f;
    std::cout << "\n";
  });
}

}  // namespace kvroute::cli
