#include "kvroute/strategy.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>
#include <stdexcept>

#include "config/did_you_mean.h"

namespace kvroute {

namespace {

std::string trim(const std::string& s) {
  std::size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  std::size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// The whole of s as an int, or false.
bool parse_int(const std::string& s, int& out) {
  std::string t = trim(s);
  if (t.empty()) return false;
  const char* end = t.data() + t.size();
  auto [ptr, ec] = std::from_chars(t.data(), end, out);
  return ec == std::errc() && ptr == end;
}

[[noreturn]] void fail(const std::string& spec, const std::string& why) {
  throw std::invalid_argument("strategy '" + spec + "': " + why);
}

std::vector<int> parse_list(const std::string& spec, const std::string& body, int n_layers) {
  std::vector<int> src;
  std::size_t start = 0;
  while (true) {
    std::size_t comma = body.find(',', start);
    std::string field = body.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    int v = 0;
    if (!parse_int(field, v))
      fail(spec, "entry " + std::to_string(src.size()) + " ('" + trim(field) + "') is not an integer");
    src.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (static_cast<int>(src.size()) != n_layers)
    fail(spec, "list has " + std::to_string(src.size()) + " entries but the model has " +
                   std::to_string(n_layers) + " layers");
  return src;
}

// The integer argument of "form" (e.g. "keep:N", var "N"), within [lo, hi].
int parse_arg(const std::string& spec, const std::string& form, const std::string& var, const std::string& arg,
              int lo, int hi) {
  int v = 0;
  if (!parse_int(arg, v) || v < lo || v > hi) {
    std::string range = hi == std::numeric_limits<int>::max()
                            ? var + " >= " + std::to_string(lo)
                            : var + " in " + std::to_string(lo) + ".." + std::to_string(hi);
    fail(spec, form + " needs an integer " + range + " (got '" + trim(arg) + "')");
  }
  return v;
}

}  // namespace

// Every strategy, in the order --help and README list them. A parser gets the text after ':'
// (parse_strategy has already checked that there is one exactly when the form has one).
const std::vector<StrategyKind>& strategy_kinds() {
  using std::string;
  static const std::vector<StrategyKind> kinds = {
      {"full", "every layer keeps its cache",
       [](const string&, const string&, int L) {
         std::vector<int> src(L);
         for (int l = 0; l < L; ++l) src[l] = l;
         return src;
       }},
      {"cla:K", "groups of K adjacent layers share the group's first cache",
       [](const string& spec, const string& arg, int L) {
         // K >= L is allowed (one group, same as 'first') so a default like cla:2 works for L=1.
         const int k = parse_arg(spec, "cla:K", "K", arg, 1, std::numeric_limits<int>::max());
         std::vector<int> src(L);
         for (int l = 0; l < L; ++l) src[l] = l / k * k;
         return src;
       }},
      {"first", "every layer reads layer 0's cache",
       [](const string&, const string&, int L) { return std::vector<int>(L, 0); }},
      {"half", "the upper half reads the last cache layer of the lower half (YOCO-like)",
       [](const string&, const string&, int L) {
         // Lower half = layers 0..h-1 with h = max(1, floor(L/2)); they keep their caches and
         // every upper layer reads layer h-1. For odd L the upper half is the larger one.
         const int h = std::max(1, L / 2);
         std::vector<int> src(L);
         for (int l = 0; l < L; ++l) src[l] = std::min(l, h - 1);
         return src;
       }},
      {"keep:N", "N evenly spaced cache layers (layer 0 included); others read the nearest one below",
       [](const string& spec, const string& arg, int L) {
         const int n = parse_arg(spec, "keep:N", "N", arg, 1, L);
         std::vector<int> caches;
         for (int i = 0; i < n; ++i) caches.push_back(static_cast<int>((2LL * i * L + n) / (2LL * n)));  // round(i*L/n)
         return strategy_from_cache_layers(caches, L);
       }},
      {"list:a,b,...", "an explicit map; src[l] <= l and a source layer keeps its own cache",
       [](const string& spec, const string& arg, int L) {
         std::vector<int> src = parse_list(spec, arg, L);
         try {
           validate_strategy(src, L);
         } catch (const std::invalid_argument& e) {
           fail(spec, e.what());
         }
         return src;
       }},
      {"greedy:N",
       "kvroute eval only: from full, repeatedly drop the cache layer whose removal raises the loss least, "
       "until N remain, choosing on the first tokens of the training split; its val loss is measured on the "
       "validation windows like every row's (no selection bias); prints the drops and the map as list:...",
       nullptr},
  };
  return kinds;
}

std::string strategy_help(bool include_searches) {
  std::size_t width = 0;
  for (const StrategyKind& k : strategy_kinds()) width = std::max(width, k.form.size());
  std::string out;
  for (const StrategyKind& k : strategy_kinds()) {
    if (!k.parse && !include_searches) continue;
    if (!out.empty()) out += '\n';
    out += std::string(k.form) + std::string(width + 2 - k.form.size(), ' ') + std::string(k.doc);
  }
  return out;
}

namespace {

const StrategyKind* find_kind(const std::string& name) {
  for (const StrategyKind& k : strategy_kinds())
    if (k.name() == name) return &k;
  return nullptr;
}

// "unknown strategy 'x' (expected full, cla:K, ...)" with the nearest name, keeping the argument:
// "clx:2" -> did you mean 'cla:2'. Searches are left out of the list: parse_strategy refuses them.
std::string unknown_strategy_message(const std::string& spec, const std::string& name, const std::string& arg,
                                     bool has_arg) {
  std::string expected;
  std::vector<std::string> names;
  for (const StrategyKind& k : strategy_kinds()) {
    names.emplace_back(k.name());
    if (!k.parse) continue;
    if (!expected.empty()) expected += ", ";
    // A list argument is shortened to "..." to keep this line short.
    expected += k.takes_list() ? std::string(k.name()) + ":..." : std::string(k.form);
  }
  std::string hint = nearest(name, names, 2);
  if (!hint.empty() && has_arg) hint += ":" + arg;
  return "unknown strategy '" + spec + "' (expected " + expected + ")" + did_you_mean(hint);
}

}  // namespace

int SharingStrategy::n_cache_layers() const {
  int n = 0;
  for (std::size_t l = 0; l < src.size(); ++l) n += src[l] == static_cast<int>(l);
  return n;
}

double SharingStrategy::kv_fraction() const {
  return src.empty() ? 0.0 : static_cast<double>(n_cache_layers()) / static_cast<double>(src.size());
}

std::string SharingStrategy::map_string() const {
  std::string s;
  for (std::size_t l = 0; l < src.size(); ++l) {
    if (l) s += ',';
    s += std::to_string(src[l]);
  }
  return s;
}

void validate_strategy(const std::vector<int>& src, int n_layers) {
  if (n_layers < 1) throw std::invalid_argument("n_layers must be >= 1 (got " + std::to_string(n_layers) + ")");
  if (static_cast<int>(src.size()) != n_layers)
    throw std::invalid_argument("strategy has " + std::to_string(src.size()) + " entries but the model has " +
                                std::to_string(n_layers) + " layers");
  // One ascending pass suffices: src[l] <= l has already been checked for src[l].
  for (int l = 0; l < n_layers; ++l) {
    int s = src[l];
    std::string head = "layer " + std::to_string(l) + " reads layer " + std::to_string(s);
    if (s < 0 || s > l)
      throw std::invalid_argument(head + " (a layer can only read itself or an earlier layer, 0.." +
                                  std::to_string(l) + ")");
    if (src[s] != s)
      throw std::invalid_argument(head + ", which itself reads layer " + std::to_string(src[s]) +
                                  " (a source layer must keep its own cache)");
  }
}

std::vector<int> strategy_from_cache_layers(const std::vector<int>& cache_layers, int n_layers) {
  if (n_layers < 1) throw std::invalid_argument("n_layers must be >= 1 (got " + std::to_string(n_layers) + ")");
  std::vector<int> caches = cache_layers;
  std::sort(caches.begin(), caches.end());
  caches.erase(std::unique(caches.begin(), caches.end()), caches.end());
  for (int c : caches)
    if (c < 0 || c >= n_layers)
      throw std::invalid_argument("cache layer " + std::to_string(c) + " is out of range 0.." +
                                  std::to_string(n_layers - 1));
  if (caches.empty() || caches.front() != 0)
    throw std::invalid_argument("cache layers must include layer 0 (it has no earlier layer to read)");
  std::vector<int> src(n_layers);
  std::size_t next = 0;  // index of the first cache layer above the current one
  for (int l = 0; l < n_layers; ++l) {
    while (next < caches.size() && caches[next] <= l) ++next;
    src[l] = caches[next - 1];
  }
  return src;
}

SharingStrategy parse_strategy(const std::string& spec_in, int n_layers) {
  if (n_layers < 1) throw std::invalid_argument("n_layers must be >= 1 (got " + std::to_string(n_layers) + ")");
  const std::string spec = trim(spec_in);
  const std::size_t colon = spec.find(':');
  const std::string name = trim(spec.substr(0, colon));
  const bool has_arg = colon != std::string::npos;
  const std::string arg = has_arg ? spec.substr(colon + 1) : "";

  const StrategyKind* kind = find_kind(name);
  if (!kind) throw std::invalid_argument(unknown_strategy_message(spec, name, arg, has_arg));
  if (!kind->parse)
    fail(spec, std::string(kind->form) + " searches for the best map with a model and validation data; "
               "`kvroute eval` resolves it and prints the map, to pass elsewhere as list:...");
  if (has_arg && !kind->takes_arg()) fail(spec, "'" + name + "' takes no argument");
  if (!has_arg && kind->takes_arg()) fail(spec, "'" + name + "' needs an argument: " + std::string(kind->form));
  return SharingStrategy{spec, kind->parse(spec, arg, n_layers)};
}

bool is_greedy_strategy(const std::string& spec) {
  const std::string t = trim(spec);
  return trim(t.substr(0, t.find(':'))) == "greedy";
}

std::vector<std::string> split_strategy_list(const std::string& specs) {
  // Split into tokens on ';' and ','; a ',' token that starts with a digit or '-' extends the
  // preceding list:, anything else starts a new strategy.
  if (trim(specs).empty()) throw std::invalid_argument("no strategies given");
  std::vector<std::string> groups;
  bool last_is_list = false;  // the current group is a list: that may take more numbers
  std::size_t start = 0;
  while (true) {
    std::size_t end = specs.find_first_of(",;", start);
    std::string tok = trim(specs.substr(start, end == std::string::npos ? std::string::npos : end - start));
    bool after_comma = start > 0 && specs[start - 1] == ',';
    if (tok.empty())
      throw std::invalid_argument("empty strategy in '" + specs + "' (stray ',' or ';'?)");
    bool numeric = std::isdigit(static_cast<unsigned char>(tok[0])) || tok[0] == '-' || tok[0] == '+';
    if (numeric) {
      if (!(after_comma && last_is_list))
        throw std::invalid_argument("'" + tok + "' in '" + specs +
                                    "' is not a strategy (numbers only continue a list:)");
      groups.back() += "," + tok;
    } else {
      groups.push_back(tok);
      const StrategyKind* kind = find_kind(trim(tok.substr(0, tok.find(':'))));
      last_is_list = kind && kind->takes_list() && tok.find(':') != std::string::npos;
    }
    if (end == std::string::npos) break;
    if (specs[end] == ';') last_is_list = false;
    start = end + 1;
  }
  return groups;
}

std::vector<SharingStrategy> parse_strategy_list(const std::string& specs, int n_layers) {
  std::vector<SharingStrategy> out;
  for (const std::string& g : split_strategy_list(specs)) out.push_back(parse_strategy(g, n_layers));
  return out;
}

}  // namespace kvroute
