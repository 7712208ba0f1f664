// Typed config: one registry of leaf keys drives YAML loading, --set
// overrides, to_yaml and the error messages, so a field is described once.
#include "kvroute/config.h"
#include "kvroute/input_file.h"
#include "kvroute/input_limits.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>
#include <variant>

#include "config/did_you_mean.h"
#include "kvroute/routing.h"
#include "kvroute/strategy.h"

namespace kvroute {
namespace {

// ---------------------------------------------------------------- registry

template <class T>
using Ref = T& (*)(Config&);
using FieldRef = std::variant<Ref<int>, Ref<long>, Ref<double>, Ref<bool>, Ref<std::string>>;

// Allowed numeric interval; open ends are excluded.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;
};

Range at_least(double lo) { return {.lo = lo}; }
Range greater_than(double lo) { return {.lo = lo, .lo_open = true}; }
// Interval with the bounds spelled as in math: "[)", "()", "[]".
Range interval(double lo, double hi, std::string_view brackets) {
  return {lo, hi, brackets[0] == '(', brackets[1] == ')'};
}

struct Field {
  std::string_view path;                  // dotted key, e.g. "train.checkpoint.keep_last"
  FieldRef ref;                           // where the value lives in Config
  std::string_view doc;                   // one line, printed as a comment by to_yaml
  Range range = {};                       // numeric fields
  std::vector<std::string_view> choices = {};  // string fields: allowed values (empty = any)
  bool non_empty = false;                 // string fields
  bool list = false;                      // string fields: a YAML sequence is taken too, comma-joined
};

// FIELD(model.d_model) names the key and its accessor from one spelling.
#define FIELD(member) .path = #member, .ref = +[](Config& c) -> auto& { return c.member; }

// Every field of config.h, grouped by section (to_yaml relies on the grouping).
// Add new fields here: nothing else needs to change.
const std::vector<Field>& registry() {
  static const std::vector<Field> fields = {
      {FIELD(model.vocab_size), .doc = "token vocabulary size", .range = at_least(2)},
      {FIELD(model.d_model), .doc = "residual stream width", .range = at_least(1)},
      {FIELD(model.n_layers), .doc = "transformer blocks", .range = at_least(1)},
      {FIELD(model.n_heads), .doc = "query heads", .range = at_least(1)},
      {FIELD(model.n_kv_heads), .doc = "key/value heads; must divide n_heads (GQA)", .range = at_least(1)},
      {FIELD(model.d_ff), .doc = "SwiGLU hidden width", .range = at_least(1)},
      {FIELD(model.context), .doc = "maximum sequence length", .range = at_least(1)},
      {FIELD(model.head_dim), .doc = "width of one attention head (even); 0 = d_model / n_heads",
       .range = at_least(0)},
      {FIELD(model.qkv_bias), .doc = "add a learned bias after the q, k and v projections (Qwen2)"},
      {FIELD(model.qk_norm), .doc = "RMSNorm each head's q and k (gains of head_dim) before RoPE (Qwen3)"},
      {FIELD(model.rope_theta), .doc = "RoPE base frequency", .range = greater_than(0)},
      {FIELD(model.rope_scaling), .doc = "RoPE inverse-frequency scaling: none, or llama3 (Llama 3.1, the rope_* keys below)",
       .choices = {"none", "llama3"}},
      {FIELD(model.rope_factor), .doc = "llama3: low frequencies are divided by this", .range = greater_than(0)},
      {FIELD(model.rope_low_freq_factor), .doc = "llama3: wavelengths above rope_original_context / this are divided "
                                                 "by rope_factor",
       .range = greater_than(0)},
      {FIELD(model.rope_high_freq_factor), .doc = "llama3: wavelengths below rope_original_context / this are kept "
                                                  "(> rope_low_freq_factor); in between a smooth ramp",
       .range = greater_than(0)},
      {FIELD(model.rope_original_context), .doc = "llama3: the context the model was pre-trained with",
       .range = at_least(1)},
      {FIELD(model.norm_eps), .doc = "RMSNorm epsilon", .range = greater_than(0)},
      {FIELD(model.tie_embeddings), .doc = "share the input embedding with the output head"},
      {FIELD(model.init_std), .doc = "std of the normal weight init", .range = greater_than(0)},
      {FIELD(model.init_from), .doc = "checkpoint to take weights from; empty = random init"},

      {FIELD(routing.mode), .doc = "KV routing during training", .choices = {"none", "stochastic", "fixed"}},
      {FIELD(routing.p), .doc = "stochastic: probability that a layer l>0 routes away",
       .range = interval(0, 1, "[]")},
      {FIELD(routing.scheme), .doc = "stochastic: which earlier layer a routed layer reads",
       .choices = routing_scheme_names()},
      {FIELD(routing.granularity), .doc = "draw routes once per batch (the paper's setting) or per sequence",
       .choices = {"sequence", "batch"}},
      {FIELD(routing.strategy), .doc = "fixed: the sharing strategy trained with, e.g. cla:2"},
      {FIELD(routing.group), .doc = "scheme rdcla: group size K; a routed layer reads its group's first layer (the CLA@K map)",
       .range = at_least(1)},

      {FIELD(train.backend), .doc = "compute backend", .choices = {"cpu", "cuda"}},
      {FIELD(train.threads), .doc = "CPU threads; 0 = OMP_NUM_THREADS or all cores", .range = at_least(0)},
      {FIELD(train.batch_size), .doc = "sequences per micro-batch", .range = at_least(1)},
      {FIELD(train.seq_len), .doc = "tokens per sequence (<= model.context)", .range = at_least(1)},
      {FIELD(train.grad_accum), .doc = "micro-batches per optimizer step", .range = at_least(1)},
      {FIELD(train.steps), .doc = "optimizer steps", .range = at_least(0)},
      {FIELD(train.lr), .doc = "peak learning rate", .range = at_least(0)},
      {FIELD(train.min_lr_ratio), .doc = "cosine decays to lr * min_lr_ratio", .range = interval(0, 1, "[]")},
      {FIELD(train.warmup_steps), .doc = "linear warmup steps (<= steps)", .range = at_least(0)},
      {FIELD(train.weight_decay), .doc = "AdamW decoupled weight decay", .range = at_least(0)},
      {FIELD(train.beta1), .doc = "AdamW beta1", .range = interval(0, 1, "[)")},
      {FIELD(train.beta2), .doc = "AdamW beta2", .range = interval(0, 1, "[)")},
      {FIELD(train.adam_eps), .doc = "AdamW epsilon", .range = greater_than(0)},
      {FIELD(train.grad_clip), .doc = "global-norm gradient clip; 0 = off", .range = at_least(0)},
      {FIELD(train.seed), .doc = "seed for init, data order and routes"},
      {FIELD(train.log_interval), .doc = "steps between log lines", .range = at_least(1)},
      {FIELD(train.eval_interval), .doc = "steps between evaluations; 0 = only at the end", .range = at_least(0)},
      {FIELD(train.eval_batches), .doc = "validation batches per evaluation", .range = at_least(1)},
      {FIELD(train.eval_strategies), .doc = "sharing strategies whose validation loss every evaluation reports, e.g. [full, cla:2]",
       .list = true},
      {FIELD(train.out_dir), .doc = "run directory (logs, checkpoints)", .non_empty = true},
      {FIELD(train.on_nonfinite), .doc = "on a NaN/Inf loss: stop the run or skip the step",
       .choices = {"stop", "skip"}},
      {FIELD(train.recompute), .doc = "recompute in backward instead of keeping: none, attention (q, scores), layer (all but K/V)",
       .choices = {"none", "attention", "layer"}},
      {FIELD(train.precision), .doc = "fp32; bf16 matmul inputs with fp32 accumulation (and attention on cuda); auto: bf16 where the hardware has it",
       .choices = {"fp32", "bf16", "auto"}},
      {FIELD(train.deterministic), .doc = "bitwise-reproducible GPU results; false lets CUDA attention backward use atomics"},
      {FIELD(train.zero), .doc = "ZeRO stage under mpirun: 0 = AdamW state on every rank, 1 = each rank keeps 1/N of it",
       .range = interval(0, 1, "[]")},
      {FIELD(train.overlap_allreduce), .doc = "under mpirun: start each gradient bucket's all-reduce as soon as backward "
                                              "finishes it (false: all of them after backward; the sums are the same)"},
      {FIELD(train.allreduce_bucket_mb), .doc = "MiB of gradients per all-reduce call under mpirun: fewer calls when "
                                                "larger, an earlier start during backward when smaller",
       .range = interval(1e-3, 4096, "[]")},
      {FIELD(train.collective_timeout_s), .doc = "under mpirun: a collective (gradient all-reduce, loss sum, stop "
                                                 "vote, ...) that does not complete in this many seconds ends the job "
                                                 "(a frozen or lost rank), naming the step and the last checkpoint; 0 = "
                                                 "wait forever",
       .range = at_least(0)},
      {FIELD(train.checkpoint.interval), .doc = "steps between checkpoints; 0 = only at the end",
       .range = at_least(0)},
      {FIELD(train.checkpoint.keep_last), .doc = "periodic checkpoints kept (older ones are removed)",
       .range = at_least(1)},

      {FIELD(data.tokenizer), .doc = "\"byte\" or a tokenizer directory (kvroute data tokenizer)", .non_empty = true},
      {FIELD(data.shards), .doc = "token shard directory (kvroute data encode); empty = use train_path"},
      {FIELD(data.train_path), .doc = "training text file, tokenized on load (when data.shards is empty)"},
      {FIELD(data.val_path), .doc = "validation text file; empty = split off the end of train_path"},
      {FIELD(data.val_fraction), .doc = "validation share of train_path when val_path is empty",
       .range = interval(0, 1, "()")},
      {FIELD(data.order), .doc = "training windows: random (seeded, epoch-wise) or sequential",
       .choices = {"random", "sequential"}},
      {FIELD(data.verify), .doc = "check shard checksums and token ids when loading (one pass over the shards)"},
  };
  return fields;
}

#undef FIELD

const Field* find_field(std::string_view path) {
  for (const Field& f : registry())
    if (f.path == path) return &f;
  return nullptr;
}

// "model", "train", "train.checkpoint", ...: a prefix of some leaf path.
bool is_section(std::string_view path) {
  for (const Field& f : registry())
    if (f.path.size() > path.size() && f.path.starts_with(path) && f.path[path.size()] == '.') return true;
  return false;
}

// ---------------------------------------------------------------- messages

std::string last_component(std::string_view path) {
  auto dot = path.rfind('.');
  return std::string(dot == std::string_view::npos ? path : path.substr(dot + 1));
}

std::string unknown_key_message(const std::string& path) {
  std::vector<std::string> known;
  for (const Field& f : registry()) {
    known.emplace_back(f.path);
    for (auto dot = f.path.find('.'); dot != std::string_view::npos; dot = f.path.find('.', dot + 1))
      known.emplace_back(f.path.substr(0, dot));
  }
  std::string hint = nearest(path, known, 3);
  if (hint.empty()) {
    // A right key under the wrong section ("model.seq_len") is far from its
    // real path; match on the last component instead.
    std::string leaf = last_component(path);
    for (const Field& f : registry())
      if (last_component(f.path) == leaf) hint = f.path;
  }
  return "unknown key '" + path + "'" + did_you_mean(hint);
}

std::string describe(const YAML::Node& node) {
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a sequence";
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  return "nothing";
}

// Shortest text that parses back to exactly v.
std::string format_double(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

std::string range_text(const Range& r) {
  bool has_lo = std::isfinite(r.lo), has_hi = std::isfinite(r.hi);
  if (has_lo && has_hi)
    return "in " + std::string(r.lo_open ? "(" : "[") + format_double(r.lo) + ", " + format_double(r.hi) +
           (r.hi_open ? ")" : "]");
  if (has_lo) return std::string(r.lo_open ? "> " : ">= ") + format_double(r.lo);
  return std::string(r.hi_open ? "< " : "<= ") + format_double(r.hi);
}

std::string join(const std::vector<std::string_view>& items, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? std::string(sep) : "") + std::string(items[i]);
  return out;
}

// The problem with a value already stored in a field, or nullopt.
std::optional<std::string> check_number(const Field& f, double v, const std::string& text) {
  const Range& r = f.range;
  bool ok = (r.lo_open ? v > r.lo : v >= r.lo) && (r.hi_open ? v < r.hi : v <= r.hi);
  if (ok) return std::nullopt;
  return "must be " + range_text(r) + ", got " + text;
}

std::optional<std::string> check_string(const Field& f, const std::string& v) {
  if (f.non_empty && v.empty()) return "must not be empty";
  if (f.choices.empty() || std::find(f.choices.begin(), f.choices.end(), v) != f.choices.end())
    return std::nullopt;
  return "expected one of " + join(f.choices, "|") + ", got '" + v + "'" +
         did_you_mean(nearest(v, std::vector<std::string>(f.choices.begin(), f.choices.end()), 2));
}

std::optional<std::string> check_field(const Field& f, Config& cfg) {
  return std::visit(
      [&](auto ref) -> std::optional<std::string> {
        const auto& v = ref(cfg);
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) return check_string(f, v);
        else if constexpr (std::is_same_v<T, bool>) return std::nullopt;
        else if constexpr (std::is_same_v<T, double>) return check_number(f, v, format_double(v));
        else return check_number(f, static_cast<double>(v), std::to_string(v));
      },
      f.ref);
}

// ---------------------------------------------------------------- parsing

// Where a message points: "origin" or "origin:line".
std::string where(const std::string& origin, const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return origin;
  return origin + ":" + std::to_string(mark.line + 1);
}

// Whole-string decimal integer of type T ("+5", "-3"; not "12.5", "1e3", "0x10").
template <class T>
std::optional<T> parse_integer(std::string_view s) {
  if (s.starts_with("+-")) return std::nullopt;
  if (s.starts_with('+')) s.remove_prefix(1);
  T v{};
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<double> parse_double(std::string_view s) {
  if (s.starts_with("+-")) return std::nullopt;
  if (s.starts_with('+')) s.remove_prefix(1);
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

template <class T>
std::string expectation() {
  if constexpr (std::is_same_v<T, std::string>) return "a string";
  else if constexpr (std::is_same_v<T, bool>) return "true or false";
  else if constexpr (std::is_same_v<T, double>) return "a number";
  else return "an integer";
}

// Parses a YAML value into field f of cfg; returns the problem on failure.
// Quoting is ignored: "128" and 128 both set an integer field.
std::optional<std::string> set_field(const Field& f, Config& cfg, const YAML::Node& node) {
  if (f.list && node.IsSequence()) {  // [full, cla:2] is stored as "full,cla:2"
    std::string joined;
    for (const YAML::Node& item : node) {
      if (!item.IsScalar()) return "expected a list of names, got " + describe(item) + " in it";
      joined += (joined.empty() ? "" : ",") + item.Scalar();
    }
    return set_field(f, cfg, YAML::Node(joined));
  }
  return std::visit(
      [&](auto ref) -> std::optional<std::string> {
        using T = std::decay_t<decltype(ref(cfg))>;
        // A null string value ("init_from:" or "~") means empty.
        bool empty_string = std::is_same_v<T, std::string> && node.IsNull();
        if (!node.IsScalar() && !empty_string) return "expected " + expectation<T>() + ", got " + describe(node);
        const std::string text = empty_string ? "" : node.Scalar();
        std::optional<T> v;
        if constexpr (std::is_same_v<T, std::string>) v = text;
        else if constexpr (std::is_same_v<T, bool>) {
          if (text == "true" || text == "false") v = text == "true";  // not yes/no/on/off
        }
        else if constexpr (std::is_same_v<T, double>) v = parse_double(text);
        else {
          v = parse_integer<T>(text);
          if (!v && parse_integer<long long>(text))
            return "expected an integer in [" + std::to_string(std::numeric_limits<T>::min()) + ", " +
                   std::to_string(std::numeric_limits<T>::max()) + "], got '" + text + "'";
        }
        if (!v) return "expected " + expectation<T>() + ", got '" + text + "'";
        T old = ref(cfg);
        ref(cfg) = *v;
        auto problem = check_field(f, cfg);
        if (problem) ref(cfg) = old;
        return problem;
      },
      f.ref);
}

[[noreturn]] void fail(const std::string& at, const std::string& msg) { throw ConfigError(at + ": " + msg); }

// Applies one YAML mapping whose keys live under `prefix` ("" at the top).
void apply_map(Config& cfg, const YAML::Node& map, const std::string& prefix, const std::string& origin) {
  std::set<std::string> seen;
  for (const auto& kv : map) {
    const YAML::Node& key = kv.first;
    const YAML::Node& value = kv.second;
    if (!key.IsScalar()) fail(where(origin, key.Mark()), "keys must be plain names, got " + describe(key));
    std::string path = prefix.empty() ? key.Scalar() : prefix + "." + key.Scalar();
    if (!seen.insert(path).second) fail(where(origin, key.Mark()), "duplicate key '" + path + "'");
    if (const Field* f = find_field(path)) {
      if (auto problem = set_field(*f, cfg, value)) fail(where(origin, value.Mark()), path + ": " + *problem);
    } else if (is_section(path)) {
      if (value.IsNull()) continue;  // "model:" with everything commented out
      if (!value.IsMap())
        fail(where(origin, value.Mark()), path + ": is a section, expected a mapping of its keys, got " + describe(value));
      apply_map(cfg, value, path, origin);
    } else {
      fail(where(origin, key.Mark()), unknown_key_message(path));
    }
  }
}

std::string trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return "";
  auto e = s.find_last_not_of(" \t");
  return std::string(s.substr(b, e - b + 1));
}

// True for strings a YAML reader would take as null, bool or number; to_yaml
// quotes them so other tools read them back as strings too.
bool looks_typed(const std::string& s) {
  std::string lower = s;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* word : {"", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n", ".inf", "-.inf", ".nan"})
    if (lower == word) return true;
  return parse_double(s).has_value();
}

}  // namespace

void apply_config_yaml(Config& cfg, const std::string& yaml_text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(origin + ": YAML syntax error at line " + std::to_string(e.mark.line + 1) + ", column " +
                      std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (root.IsNull()) return;  // empty or comments only
  if (!root.IsMap()) fail(origin, "expected a mapping of sections (model:, train:, ...), got " + describe(root));
  Config updated = cfg;  // all or nothing: cfg is untouched on error
  apply_map(updated, root, "", origin);
  cfg = std::move(updated);
}

void apply_config_file(Config& cfg, const std::string& path) {
  if (std::filesystem::is_directory(path)) throw ConfigError("config file '" + path + "' is a directory");
  std::string text;
  try {
    text = read_input_file(path, limits::kConfigFileBytes, "config file '" + path + "'");
  } catch (const std::runtime_error& e) {
    throw ConfigError(e.what());
  }
  apply_config_yaml(cfg, text, path);
}

void apply_override(Config& cfg, const std::string& assignment) {
  const std::string origin = "--set '" + assignment + "'";
  auto eq = assignment.find('=');
  if (eq == std::string::npos) fail(origin, "expected section.key=value (no '=' found)");
  std::string path = trim(std::string_view(assignment).substr(0, eq));
  if (path.empty()) fail(origin, "expected section.key=value (the key is empty)");
  const Field* f = find_field(path);
  if (!f) {
    if (is_section(path)) fail(origin, "'" + path + "' is a section; set one of its keys (" + path + ".<key>=value)");
    fail(origin, unknown_key_message(path));
  }
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::ParserException& e) {
    fail(origin, path + ": cannot parse the value as YAML: " + e.msg);
  }
  if (auto problem = set_field(*f, cfg, value)) fail(origin, path + ": " + *problem);
}

void validate(const Config& cfg) {
  std::vector<std::string> errors;
  Config copy = cfg;  // registry accessors take a mutable Config
  for (const Field& f : registry())
    if (auto problem = check_field(f, copy)) errors.push_back(std::string(f.path) + ": " + *problem);

  const ModelConfig& m = cfg.model;
  auto add = [&](bool bad, std::string msg) {
    if (bad) errors.push_back(std::move(msg));
  };
  auto num = [](auto v) { return std::to_string(v); };
  if (m.n_kv_heads >= 1)
    add(m.n_heads % m.n_kv_heads != 0, "model.n_kv_heads (" + num(m.n_kv_heads) + ") must divide model.n_heads (" +
                                           num(m.n_heads) + ")");
  if (m.head_dim > 0)
    add(m.head_dim % 2 != 0, "model.head_dim (" + num(m.head_dim) + ") must be even (RoPE rotates pairs)");
  else if (m.n_heads >= 1) {
    if (m.d_model % m.n_heads != 0)
      add(true, "model.d_model (" + num(m.d_model) + ") must be divisible by model.n_heads (" + num(m.n_heads) + ")");
    else
      add((m.d_model / m.n_heads) % 2 != 0, "head dim model.d_model / model.n_heads = " + num(m.d_model / m.n_heads) +
                                                " must be even (RoPE rotates pairs)");
  }
  add(m.rope_scaling == "llama3" && !(m.rope_high_freq_factor > m.rope_low_freq_factor),
      "model.rope_high_freq_factor (" + format_double(m.rope_high_freq_factor) +
          ") must be > model.rope_low_freq_factor (" + format_double(m.rope_low_freq_factor) + ") for llama3 RoPE scaling");
  add(cfg.train.seq_len > m.context,
      "train.seq_len (" + num(cfg.train.seq_len) + ") must be <= model.context (" + num(m.context) + ")");
  add(cfg.routing.mode == "fixed" && cfg.routing.strategy.empty(),
      "routing.strategy must be set when routing.mode is fixed");
  try {
    for (const std::string& s : split_strategy_list(cfg.train.eval_strategies))
      if (is_greedy_strategy(s)) add(true, "train.eval_strategies: " + s + " is a search, for kvroute eval only");
      else parse_strategy(s, std::max(m.n_layers, 1));
  } catch (const std::exception& e) {
    add(true, "train.eval_strategies: " + std::string(e.what()));
  }
  add(cfg.train.warmup_steps > cfg.train.steps, "train.warmup_steps (" + num(cfg.train.warmup_steps) +
                                                    ") must be <= train.steps (" + num(cfg.train.steps) + ")");

  if (errors.empty()) return;
  std::string msg = "invalid config:";
  if (errors.size() == 1) msg += " " + errors[0];
  else
    for (const std::string& e : errors) msg += "\n  " + e;
  throw ConfigError(msg);
}

std::string to_yaml(const Config& cfg) {
  Config copy = cfg;
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // sections currently open, outermost first
  for (const Field& f : registry()) {
    std::vector<std::string> parts;
    std::string_view rest = f.path;
    for (auto dot = rest.find('.'); dot != std::string_view::npos; dot = rest.find('.')) {
      parts.emplace_back(rest.substr(0, dot));
      rest.remove_prefix(dot + 1);
    }
    std::size_t common = 0;
    while (common < open.size() && common < parts.size() && open[common] == parts[common]) ++common;
    for (; open.size() > common; open.pop_back()) out << YAML::EndMap;
    for (; open.size() < parts.size(); open.push_back(parts[open.size()]))
      out << YAML::Key << parts[open.size()] << YAML::Value << YAML::BeginMap;
    out << YAML::Key << std::string(rest) << YAML::Value;
    std::visit(
        [&](auto ref) {
          const auto& v = ref(copy);
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, double>) out << format_double(v);
          else if constexpr (std::is_same_v<T, std::string>) out << (looks_typed(v) ? YAML::DoubleQuoted : YAML::Auto) << v;
          else out << v;
        },
        f.ref);
    out << YAML::Comment(std::string(f.doc));
  }
  for (; !open.empty(); open.pop_back()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Config load_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  Config cfg;
  for (const std::string& f : files) apply_config_file(cfg, f);
  for (const std::string& o : overrides) apply_override(cfg, o);
  validate(cfg);
  return cfg;
}

}  // namespace kvroute
