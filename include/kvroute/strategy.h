// Depth-wise KV sharing strategies: a map layer -> source layer.
// Valid when src[l] <= l for every l and src[src[l]] == src[l] (a source layer
// keeps its own cache). Layers with src[l] == l own a KV cache.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvroute {

struct SharingStrategy {
  std::string name;          // as given, e.g. "cla:2"
  std::vector<int> src;      // src[l] for l in 0..n_layers-1

  int n_cache_layers() const;      // layers that keep a cache
  double kv_fraction() const;      // n_cache_layers / n_layers
  std::string map_string() const;  // "0,0,2,2"
};

// One kind of strategy. strategy_kinds() is the one list of them: parse_strategy, the
// --help of the commands that take strategies, the unknown-name error and README's table
// (test_strategy compares them) all come from it. Adding a strategy is one entry there.
struct StrategyKind {
  std::string_view form;  // as written, e.g. "cla:K"; a form without ':' takes no argument
  std::string_view doc;   // one line, for --help and README
  // The map for n_layers layers from the text after ':' ("" when there is none); throws
  // std::invalid_argument. Null for a search (greedy:N): it needs a model and data.
  std::vector<int> (*parse)(const std::string& spec, const std::string& arg, int n_layers);

  std::string_view name() const { return form.substr(0, form.find(':')); }
  bool takes_arg() const { return form.find(':') != std::string_view::npos; }
  // The argument is a comma-separated list ("list:a,b,..."): in a strategy list it swallows
  // the numbers that follow it.
  bool takes_list() const { return form.ends_with(",..."); }
};
const std::vector<StrategyKind>& strategy_kinds();
// For --help: one "form  doc" line per kind; searches (greedy:N) only if include_searches.
std::string strategy_help(bool include_searches);

// Parses one strategy (a form of strategy_kinds()) for a model of n_layers layers.
// Throws std::invalid_argument naming the problem for an unknown name or an invalid map.
SharingStrategy parse_strategy(const std::string& spec, int n_layers);
// greedy:N is not a fixed map: it is a search that needs a model and validation data
// (kvroute eval resolves it, see evaluate.h). parse_strategy refuses it with that message.
bool is_greedy_strategy(const std::string& spec);
// Splits a strategy list (as below) into one spec per strategy, without parsing them.
std::vector<std::string> split_strategy_list(const std::string& specs);
// Comma-separated list, where "list:..." swallows the rest of its own numbers.
// Strategies are separated by ';' or by ',' before a letter: "full,cla:2,list:0,0,2,2,first".
std::vector<SharingStrategy> parse_strategy_list(const std::string& specs, int n_layers);
// Throws std::invalid_argument with the reason if src is not a valid map.
void validate_strategy(const std::vector<int>& src, int n_layers);
// The strategy whose cache layers are `cache_layers` (must contain 0): every other layer
// reads the nearest cache layer below it.
std::vector<int> strategy_from_cache_layers(const std::vector<int>& cache_layers, int n_layers);

}  // namespace kvroute
