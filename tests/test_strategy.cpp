#include "kvroute/strategy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "readme_table.h"

using namespace kvroute;
using namespace kvroute::testing_readme;

namespace {

using Map = std::vector<int>;

std::vector<int> src_of(const std::string& spec, int L) { return parse_strategy(spec, L).src; }

// The message of the std::invalid_argument that f throws ("" if it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(expr, substring)                                     \
  do {                                                                    \
    std::string msg_ = error_of([&] { (void)(expr); });                   \
    EXPECT_NE(msg_.find(substring), std::string::npos)                    \
        << "message: '" << msg_ << "' lacks '" << (substring) << "'";     \
  } while (0)

}  // namespace

// ---- maps, against hand-worked expectations ----

TEST(Strategy, OneLayerEveryStrategyIsTheIdentity) {
  for (const char* s : {"full", "cla:1", "cla:2", "cla:4", "first", "half", "keep:1", "list:0"})
    EXPECT_EQ(src_of(s, 1), Map({0})) << s;
}

TEST(Strategy, FourLayers) {
  EXPECT_EQ(src_of("full", 4), Map({0, 1, 2, 3}));
  EXPECT_EQ(src_of("cla:1", 4), Map({0, 1, 2, 3}));
  EXPECT_EQ(src_of("cla:2", 4), Map({0, 0, 2, 2}));
  EXPECT_EQ(src_of("cla:3", 4), Map({0, 0, 0, 3}));
  EXPECT_EQ(src_of("cla:4", 4), Map({0, 0, 0, 0}));
  EXPECT_EQ(src_of("cla:9", 4), Map({0, 0, 0, 0}));
  EXPECT_EQ(src_of("first", 4), Map({0, 0, 0, 0}));
  EXPECT_EQ(src_of("half", 4), Map({0, 1, 1, 1}));
  EXPECT_EQ(src_of("keep:1", 4), Map({0, 0, 0, 0}));
  EXPECT_EQ(src_of("keep:2", 4), Map({0, 0, 2, 2}));
  EXPECT_EQ(src_of("keep:3", 4), Map({0, 1, 1, 3}));  // round(0, 1.33, 2.67) = 0, 1, 3
  EXPECT_EQ(src_of("keep:4", 4), Map({0, 1, 2, 3}));
  EXPECT_EQ(src_of("list:0,0,2,0", 4), Map({0, 0, 2, 0}));
}

TEST(Strategy, SixLayers) {
  EXPECT_EQ(src_of("full", 6), Map({0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(src_of("cla:2", 6), Map({0, 0, 2, 2, 4, 4}));
  EXPECT_EQ(src_of("cla:3", 6), Map({0, 0, 0, 3, 3, 3}));
  EXPECT_EQ(src_of("cla:4", 6), Map({0, 0, 0, 0, 4, 4}));
  EXPECT_EQ(src_of("first", 6), Map({0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(src_of("half", 6), Map({0, 1, 2, 2, 2, 2}));
  EXPECT_EQ(src_of("keep:2", 6), Map({0, 0, 0, 3, 3, 3}));
  EXPECT_EQ(src_of("keep:4", 6), Map({0, 0, 2, 3, 3, 5}));  // round(0, 1.5, 3, 4.5) = 0, 2, 3, 5
  EXPECT_EQ(src_of("keep:6", 6), Map({0, 1, 2, 3, 4, 5}));
}

TEST(Strategy, TwelveLayers) {
  EXPECT_EQ(src_of("full", 12), Map({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(src_of("cla:2", 12), Map({0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10}));
  EXPECT_EQ(src_of("cla:3", 12), Map({0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9}));
  EXPECT_EQ(src_of("cla:4", 12), Map({0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8}));
  EXPECT_EQ(src_of("first", 12), Map(12, 0));
  EXPECT_EQ(src_of("half", 12), Map({0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5}));
  EXPECT_EQ(src_of("keep:3", 12), Map({0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8}));
  // round(0, 2.4, 4.8, 7.2, 9.6) = 0, 2, 5, 7, 10
  EXPECT_EQ(src_of("keep:5", 12), Map({0, 0, 2, 2, 2, 5, 5, 7, 7, 7, 10, 10}));
  EXPECT_EQ(src_of("keep:12", 12), src_of("full", 12));
  EXPECT_EQ(src_of("keep:1", 12), src_of("first", 12));
}

TEST(Strategy, HalfWithOddLayerCountKeepsTheFloorHalf) {
  EXPECT_EQ(src_of("half", 5), Map({0, 1, 1, 1, 1}));
  EXPECT_EQ(src_of("half", 2), Map({0, 0}));
  EXPECT_EQ(src_of("half", 3), Map({0, 0, 0}));
}

TEST(Strategy, EveryParsedStrategyIsValid) {
  for (int L : {1, 2, 3, 4, 5, 6, 7, 12, 13, 32}) {
    std::vector<std::string> specs = {"full", "first", "half", "cla:1", "cla:2", "cla:3", "cla:5"};
    for (int n = 1; n <= L; ++n) specs.push_back("keep:" + std::to_string(n));
    for (const std::string& s : specs) {
      SharingStrategy st = parse_strategy(s, L);
      EXPECT_NO_THROW(validate_strategy(st.src, L)) << s << " L=" << L;
      if (s.rfind("keep:", 0) == 0) {
        EXPECT_EQ(st.n_cache_layers(), std::stoi(s.substr(5))) << s << " L=" << L;
      }
    }
  }
}

TEST(Strategy, NameIsKeptAsGivenAndWhitespaceIsTolerated) {
  EXPECT_EQ(parse_strategy("cla:2", 4).name, "cla:2");
  SharingStrategy s = parse_strategy("  list: 0, 0, 2, 2 ", 4);
  EXPECT_EQ(s.src, Map({0, 0, 2, 2}));
  EXPECT_EQ(s.name, "list: 0, 0, 2, 2");
}

// ---- summaries ----

TEST(Strategy, CacheLayerCountAndKvFraction) {
  EXPECT_EQ(parse_strategy("full", 12).n_cache_layers(), 12);
  EXPECT_DOUBLE_EQ(parse_strategy("full", 12).kv_fraction(), 1.0);
  EXPECT_EQ(parse_strategy("cla:2", 12).n_cache_layers(), 6);
  EXPECT_DOUBLE_EQ(parse_strategy("cla:2", 12).kv_fraction(), 0.5);
  EXPECT_DOUBLE_EQ(parse_strategy("cla:4", 6).kv_fraction(), 2.0 / 6.0);
  EXPECT_EQ(parse_strategy("first", 12).n_cache_layers(), 1);
  EXPECT_DOUBLE_EQ(parse_strategy("first", 12).kv_fraction(), 1.0 / 12.0);
  EXPECT_DOUBLE_EQ(parse_strategy("half", 12).kv_fraction(), 0.5);
  EXPECT_DOUBLE_EQ(parse_strategy("keep:3", 12).kv_fraction(), 0.25);
  EXPECT_DOUBLE_EQ(SharingStrategy{}.kv_fraction(), 0.0);
}

TEST(Strategy, MapString) {
  EXPECT_EQ(parse_strategy("cla:2", 4).map_string(), "0,0,2,2");
  EXPECT_EQ(parse_strategy("full", 1).map_string(), "0");
  EXPECT_EQ(parse_strategy("half", 12).map_string(), "0,1,2,3,4,5,5,5,5,5,5,5");
  EXPECT_EQ(SharingStrategy{}.map_string(), "");
}

// ---- strategy_from_cache_layers ----

TEST(Strategy, FromCacheLayers) {
  EXPECT_EQ(strategy_from_cache_layers({0}, 4), Map({0, 0, 0, 0}));
  EXPECT_EQ(strategy_from_cache_layers({0, 4, 8}, 12), src_of("keep:3", 12));
  EXPECT_EQ(strategy_from_cache_layers({8, 0, 4, 4, 0}, 12), src_of("keep:3", 12));  // unsorted, duplicates
  EXPECT_EQ(strategy_from_cache_layers({0, 1, 2, 3}, 4), src_of("full", 4));
  EXPECT_EQ(strategy_from_cache_layers({0, 5}, 6), Map({0, 0, 0, 0, 0, 5}));
}

TEST(Strategy, FromCacheLayersErrors) {
  EXPECT_ERROR(strategy_from_cache_layers({1, 2}, 4), "must include layer 0");
  EXPECT_ERROR(strategy_from_cache_layers({}, 4), "must include layer 0");
  EXPECT_ERROR(strategy_from_cache_layers({0, 4}, 4), "cache layer 4 is out of range 0..3");
  EXPECT_ERROR(strategy_from_cache_layers({-1, 0}, 4), "cache layer -1 is out of range 0..3");
  EXPECT_ERROR(strategy_from_cache_layers({0}, 0), "n_layers must be >= 1");
}

// ---- validation ----

TEST(Strategy, ValidateAcceptsValidMaps) {
  EXPECT_NO_THROW(validate_strategy({0}, 1));
  EXPECT_NO_THROW(validate_strategy({0, 0, 2, 0}, 4));
  EXPECT_NO_THROW(validate_strategy({0, 1, 1, 3, 1}, 5));
}

TEST(Strategy, ValidateErrorMessages) {
  EXPECT_ERROR(validate_strategy({0, 0, 2}, 4), "strategy has 3 entries but the model has 4 layers");
  EXPECT_ERROR(validate_strategy({}, 0), "n_layers must be >= 1");
  EXPECT_ERROR(validate_strategy({1, 1}, 2),
               "layer 0 reads layer 1 (a layer can only read itself or an earlier layer, 0..0)");
  EXPECT_ERROR(validate_strategy({0, 2, 2, 3}, 4),
               "layer 1 reads layer 2 (a layer can only read itself or an earlier layer, 0..1)");
  EXPECT_ERROR(validate_strategy({0, -1, 2, 3}, 4), "layer 1 reads layer -1 (a layer can only read itself");
  EXPECT_ERROR(validate_strategy({0, 0, 1, 3}, 4),
               "layer 2 reads layer 1, which itself reads layer 0 (a source layer must keep its own cache)");
  EXPECT_ERROR(validate_strategy({0, 0, 2, 2, 3}, 5),
               "layer 4 reads layer 3, which itself reads layer 2 (a source layer must keep its own cache)");
}

// ---- parse errors ----

TEST(Strategy, UnknownName) {
  EXPECT_ERROR(parse_strategy("foo", 4),
               "unknown strategy 'foo' (expected full, cla:K, first, half, keep:N, list:...)");
  EXPECT_ERROR(parse_strategy("", 4), "unknown strategy ''");
  EXPECT_ERROR(parse_strategy("CLA:2", 4), "unknown strategy 'CLA:2'");
}

TEST(Strategy, BadArguments) {
  EXPECT_ERROR(parse_strategy("cla:0", 12), "strategy 'cla:0': cla:K needs an integer K >= 1 (got '0')");
  EXPECT_ERROR(parse_strategy("cla:x", 12), "cla:K needs an integer K >= 1 (got 'x')");
  EXPECT_ERROR(parse_strategy("cla:-2", 12), "cla:K needs an integer K >= 1 (got '-2')");
  EXPECT_ERROR(parse_strategy("cla:2x", 12), "(got '2x')");
  EXPECT_ERROR(parse_strategy("cla:", 12), "(got '')");
  EXPECT_ERROR(parse_strategy("cla", 12), "'cla' needs an argument: cla:K");
  EXPECT_ERROR(parse_strategy("keep:99", 12), "strategy 'keep:99': keep:N needs an integer N in 1..12 (got '99')");
  EXPECT_ERROR(parse_strategy("keep:0", 12), "keep:N needs an integer N in 1..12 (got '0')");
  EXPECT_ERROR(parse_strategy("keep", 12), "'keep' needs an argument: keep:N");
  EXPECT_ERROR(parse_strategy("full:2", 12), "'full' takes no argument");
  EXPECT_ERROR(parse_strategy("first:1", 12), "'first' takes no argument");
  EXPECT_ERROR(parse_strategy("half:", 12), "'half' takes no argument");
  EXPECT_ERROR(parse_strategy("full", 0), "n_layers must be >= 1 (got 0)");
}

TEST(Strategy, BadLists) {
  EXPECT_ERROR(parse_strategy("list", 4), "'list' needs an argument: list:a,b,...");
  EXPECT_ERROR(parse_strategy("list:0,0,2", 4), "list has 3 entries but the model has 4 layers");
  EXPECT_ERROR(parse_strategy("list:0,0,2,2,4", 4), "list has 5 entries but the model has 4 layers");
  EXPECT_ERROR(parse_strategy("list:0,x,2,2", 4), "entry 1 ('x') is not an integer");
  EXPECT_ERROR(parse_strategy("list:0,,2,2", 4), "entry 1 ('') is not an integer");
  EXPECT_ERROR(parse_strategy("list:", 4), "entry 0 ('') is not an integer");
  EXPECT_ERROR(parse_strategy("list:0,0,1,1", 4),
               "strategy 'list:0,0,1,1': layer 2 reads layer 1, which itself reads layer 0 "
               "(a source layer must keep its own cache)");
  EXPECT_ERROR(parse_strategy("list:0,3,2,2", 4), "layer 1 reads layer 3 (a layer can only read itself");
}

// ---- lists of strategies ----

TEST(StrategyList, MixedCommaSeparated) {
  auto v = parse_strategy_list("full,cla:2,list:0,0,2,2,first", 4);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0].name, "full");
  EXPECT_EQ(v[1].name, "cla:2");
  EXPECT_EQ(v[2].name, "list:0,0,2,2");
  EXPECT_EQ(v[2].src, Map({0, 0, 2, 2}));
  EXPECT_EQ(v[3].name, "first");
}

TEST(StrategyList, SemicolonsAndWhitespace) {
  auto v = parse_strategy_list(" full ; cla:2 , keep:2;first ", 4);
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[0].name, "full");
  EXPECT_EQ(v[1].name, "cla:2");
  EXPECT_EQ(v[2].name, "keep:2");
  EXPECT_EQ(v[3].name, "first");
}

TEST(StrategyList, AdjacentLists) {
  auto a = parse_strategy_list("list:0,0,2,2;list:0,1,1,1", 4);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].src, Map({0, 0, 2, 2}));
  EXPECT_EQ(a[1].src, Map({0, 1, 1, 1}));
  auto b = parse_strategy_list("list:0,0,2,2,list:0,1,1,1", 4);  // a letter starts a new strategy
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[1].src, Map({0, 1, 1, 1}));
  auto c = parse_strategy_list("list: 0, 0, 2, 2", 4);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].src, Map({0, 0, 2, 2}));
}

TEST(StrategyList, Single) {
  auto v = parse_strategy_list("cla:2", 4);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].src, Map({0, 0, 2, 2}));
}

TEST(StrategyList, Errors) {
  EXPECT_ERROR(parse_strategy_list("", 4), "no strategies given");
  EXPECT_ERROR(parse_strategy_list("  ", 4), "no strategies given");
  EXPECT_ERROR(parse_strategy_list("full,,first", 4), "empty strategy");
  EXPECT_ERROR(parse_strategy_list("full,", 4), "empty strategy");
  EXPECT_ERROR(parse_strategy_list(";full", 4), "empty strategy");
  EXPECT_ERROR(parse_strategy_list("cla:2,3", 4), "'3' in 'cla:2,3' is not a strategy (numbers only continue a list:)");
  EXPECT_ERROR(parse_strategy_list("2,full", 4), "'2' in '2,full' is not a strategy");
  EXPECT_ERROR(parse_strategy_list("list:0,0;2,2", 4), "'2' in 'list:0,0;2,2' is not a strategy");
  EXPECT_ERROR(parse_strategy_list("full,list:0,0,2", 4), "list has 3 entries but the model has 4 layers");
  EXPECT_ERROR(parse_strategy_list("full,bogus", 4), "unknown strategy 'bogus'");
  EXPECT_ERROR(parse_strategy_list("list:0,-1,2,2", 4), "layer 1 reads layer -1");
}

// ---- the registry: errors, --help and README come from strategy_kinds() ----

TEST(StrategyRegistry, ReadmeTableIsTheRegistry) {
  std::vector<std::string> rows;
  for (const StrategyKind& k : strategy_kinds()) rows.push_back(readme_row(k.form, k.doc));
  expect_readme_table("### Sharing strategies", "| strategy |", rows);
}

TEST(StrategyRegistry, UnknownNameListsTheParsableKindsAndSuggestsTheNearest) {
  const std::string msg = error_of([] { parse_strategy("yoco", 4); });
  for (const StrategyKind& k : strategy_kinds())
    EXPECT_EQ(msg.find(std::string(k.name())) != std::string::npos, k.parse != nullptr) << k.form << ": " << msg;
  EXPECT_ERROR(parse_strategy("clx:2", 4), "unknown strategy 'clx:2' (expected full, cla:K, first, half, keep:N, "
                                           "list:...) (did you mean 'cla:2'?)");
  EXPECT_ERROR(parse_strategy("ful", 4), "(did you mean 'full'?)");
  EXPECT_ERROR(parse_strategy("gredy:3", 4), "(did you mean 'greedy:3'?)");
  EXPECT_ERROR(parse_strategy_list("full,hlaf", 4), "unknown strategy 'hlaf' (expected");
  EXPECT_EQ(error_of([] { parse_strategy("yoco", 4); }).find("did you mean"), std::string::npos);
}

TEST(StrategyRegistry, HelpHasOneLinePerKindWithItsDoc) {
  const std::string fixed = strategy_help(false), all = strategy_help(true);
  for (const StrategyKind& k : strategy_kinds()) {
    EXPECT_NE(all.find(std::string(k.form)), std::string::npos) << k.form;
    EXPECT_NE(all.find(std::string(k.doc)), std::string::npos) << k.form;
    // Searches (greedy:N) only where a command resolves them (kvroute eval).
    EXPECT_EQ(fixed.find(std::string(k.form)) != std::string::npos, k.parse != nullptr) << k.form;
  }
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n') + 1, static_cast<long>(strategy_kinds().size()));
}

TEST(StrategyRegistry, NamesAreUniqueAndArgumentsMatchTheForm) {
  std::set<std::string_view> names;
  for (const StrategyKind& k : strategy_kinds()) {
    EXPECT_TRUE(names.insert(k.name()).second) << k.form;
    const std::string name(k.name());
    if (!k.parse) continue;
    if (k.takes_arg()) EXPECT_ERROR(parse_strategy(name, 4), "'" + name + "' needs an argument: " + std::string(k.form));
    else EXPECT_ERROR(parse_strategy(name + ":1", 4), "'" + name + "' takes no argument");
  }
}
