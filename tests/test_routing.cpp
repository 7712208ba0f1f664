#include "kvroute/routing.h"

#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvroute/strategy.h"
#include "readme_table.h"

using namespace kvroute;
using namespace kvroute::testing_readme;

namespace {

RoutingConfig stochastic(double p, const std::string& scheme, const std::string& granularity = "sequence") {
  RoutingConfig rc;
  rc.mode = "stochastic";
  rc.p = p;
  rc.scheme = scheme;
  rc.granularity = granularity;
  return rc;
}

std::vector<int32_t> row(const RouteTable& t, int b) {
  return std::vector<int32_t>(t.src.begin() + static_cast<std::ptrdiff_t>(b) * t.L,
                              t.src.begin() + static_cast<std::ptrdiff_t>(b + 1) * t.L);
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

constexpr uint64_t kSeed = 1234;

}  // namespace

// ---- table basics ----

TEST(Routing, IdentityAndAccessors) {
  RouteTable t = identity_routes(3, 5);
  EXPECT_EQ(t.B, 3);
  EXPECT_EQ(t.L, 5);
  ASSERT_EQ(t.src.size(), 15u);
  for (int b = 0; b < 3; ++b)
    for (int l = 0; l < 5; ++l) EXPECT_EQ(t.at(b, l), l);
  EXPECT_EQ(t.layer(4), std::vector<int32_t>({4, 4, 4}));
  for (int s = 0; s < 5; ++s) EXPECT_TRUE(t.is_source(s));
  EXPECT_FALSE(t.is_source(5));
  EXPECT_THROW(t.layer(5), std::out_of_range);
  EXPECT_THROW(t.layer(-1), std::out_of_range);
}

TEST(Routing, LayerColumnAndIsSource) {
  RouteTable t;
  t.B = 2;
  t.L = 4;
  t.src = {0, 0, 2, 2,  //
           0, 1, 1, 1};
  EXPECT_EQ(t.layer(0), std::vector<int32_t>({0, 0}));
  EXPECT_EQ(t.layer(1), std::vector<int32_t>({0, 1}));
  EXPECT_EQ(t.layer(3), std::vector<int32_t>({2, 1}));
  EXPECT_TRUE(t.is_source(0));
  EXPECT_TRUE(t.is_source(1));
  EXPECT_TRUE(t.is_source(2));
  EXPECT_FALSE(t.is_source(3));
}

TEST(Routing, FixedRoutesBroadcastTheStrategy) {
  RouteTable t = fixed_routes(4, {0, 0, 2, 2, 4, 4});
  EXPECT_EQ(t.B, 4);
  EXPECT_EQ(t.L, 6);
  for (int b = 0; b < 4; ++b) EXPECT_EQ(row(t, b), std::vector<int32_t>({0, 0, 2, 2, 4, 4}));
  for (int s : {0, 2, 4}) EXPECT_TRUE(t.is_source(s));
  for (int s : {1, 3, 5}) EXPECT_FALSE(t.is_source(s));
  EXPECT_NE(error_of([] { fixed_routes(2, {0, 2, 2}); }).find("layer 1 reads layer 2"), std::string::npos);
}

// ---- modes ----

TEST(Routing, ModeNoneIsIdentity) {
  RoutingConfig rc;  // default mode none
  rc.scheme = "whatever";  // irrelevant outside stochastic mode
  RouteTable t = sample_routes(rc, 8, 6, kSeed, 17, 3);
  EXPECT_EQ(t.src, identity_routes(8, 6).src);
}

TEST(Routing, ModeFixedEqualsTheStrategy) {
  RoutingConfig rc;
  rc.mode = "fixed";
  for (const char* s : {"cla:2", "half", "keep:3", "first", "full"}) {
    rc.strategy = s;
    RouteTable t = sample_routes(rc, 5, 12, kSeed, 3, 0);
    std::vector<int> m = parse_strategy(s, 12).src;
    for (int b = 0; b < 5; ++b)
      for (int l = 0; l < 12; ++l) EXPECT_EQ(t.at(b, l), m[l]) << s;
  }
  rc.strategy = "bogus";
  EXPECT_NE(error_of([&] { sample_routes(rc, 2, 4, kSeed, 0, 0); }).find("unknown strategy 'bogus'"),
            std::string::npos);
}

TEST(Routing, UnknownValuesAreNamed) {
  RoutingConfig rc;
  rc.mode = "sometimes";
  EXPECT_NE(error_of([&] { sample_routes(rc, 2, 4, kSeed, 0, 0); }).find("unknown routing mode 'sometimes'"),
            std::string::npos);
  rc = stochastic(0.5, "skip");
  EXPECT_NE(error_of([&] { sample_routes(rc, 2, 4, kSeed, 0, 0); }).find("unknown routing scheme 'skip'"),
            std::string::npos);
  rc = stochastic(0.5, "any", "token");
  EXPECT_NE(error_of([&] { sample_routes(rc, 2, 4, kSeed, 0, 0); }).find("unknown routing granularity 'token'"),
            std::string::npos);
  rc = stochastic(1.5, "any");
  EXPECT_NE(error_of([&] { sample_routes(rc, 2, 4, kSeed, 0, 0); }).find("routing p must be in [0, 1]"),
            std::string::npos);
}

// ---- stochastic: extreme probabilities ----

TEST(Routing, ZeroProbabilityIsIdentity) {
  for (const char* scheme : {"previous", "chain", "any"})
    for (const char* g : {"sequence", "batch"})
      EXPECT_EQ(sample_routes(stochastic(0.0, scheme, g), 16, 12, kSeed, 5, 1).src, identity_routes(16, 12).src);
}

TEST(Routing, ProbabilityOnePrevious) {
  RouteTable t = sample_routes(stochastic(1.0, "previous"), 16, 12, kSeed, 5, 1);
  for (int b = 0; b < 16; ++b) {
    EXPECT_EQ(t.at(b, 0), 0);
    for (int l = 1; l < 12; ++l) EXPECT_EQ(t.at(b, l), l - 1);
  }
}

TEST(Routing, ProbabilityOneChainReadsLayerZero) {
  RouteTable t = sample_routes(stochastic(1.0, "chain"), 16, 12, kSeed, 5, 1);
  for (int32_t s : t.src) EXPECT_EQ(s, 0);
}

TEST(Routing, ProbabilityOneAnyReadsBelow) {
  RouteTable t = sample_routes(stochastic(1.0, "any"), 16, 12, kSeed, 5, 1);
  for (int b = 0; b < 16; ++b) {
    EXPECT_EQ(t.at(b, 0), 0);
    for (int l = 1; l < 12; ++l) {
      EXPECT_GE(t.at(b, l), 0);
      EXPECT_LT(t.at(b, l), l);
    }
  }
}

// ---- stochastic: structure ----

TEST(Routing, SchemeInvariantsOverManySteps) {
  const int B = 8, L = 10;
  for (uint64_t step = 0; step < 50; ++step) {
    RouteTable prev = sample_routes(stochastic(0.5, "previous"), B, L, kSeed, step, 0);
    RouteTable chain = sample_routes(stochastic(0.5, "chain"), B, L, kSeed, step, 0);
    RouteTable any = sample_routes(stochastic(0.5, "any"), B, L, kSeed, step, 0);
    for (int b = 0; b < B; ++b) {
      EXPECT_EQ(prev.at(b, 0), 0);
      EXPECT_EQ(chain.at(b, 0), 0);
      EXPECT_EQ(any.at(b, 0), 0);
      for (int l = 1; l < L; ++l) {
        EXPECT_TRUE(prev.at(b, l) == l || prev.at(b, l) == l - 1);
        EXPECT_TRUE(chain.at(b, l) == l || chain.at(b, l) == chain.at(b, l - 1));
        EXPECT_GE(any.at(b, l), 0);
        EXPECT_LE(any.at(b, l), l);
      }
      // chain always yields contiguous groups sharing the first cache: a deployable map.
      std::vector<int32_t> r = row(chain, b);
      EXPECT_NO_THROW(validate_strategy(std::vector<int>(r.begin(), r.end()), L));
    }
  }
}

TEST(Routing, AnyMayReadANonSourceLayer) {
  // In training every layer computes its own K/V, so 'any' may route l -> s where s itself
  // routes elsewhere; such a table is not a deployable strategy, and that is fine.
  bool seen = false;
  for (uint64_t step = 0; step < 20 && !seen; ++step) {
    RouteTable t = sample_routes(stochastic(0.7, "any"), 16, 8, kSeed, step, 0);
    for (int b = 0; b < 16; ++b)
      for (int l = 1; l < 8; ++l)
        if (t.at(b, t.at(b, l)) != t.at(b, l)) seen = true;
  }
  EXPECT_TRUE(seen);
}

// ---- determinism ----

TEST(Routing, Deterministic) {
  RoutingConfig rc = stochastic(0.5, "any");
  RouteTable a = sample_routes(rc, 16, 12, kSeed, 42, 2);
  RouteTable b = sample_routes(rc, 16, 12, kSeed, 42, 2);
  EXPECT_EQ(a.src, b.src);
  EXPECT_NE(a.src, sample_routes(rc, 16, 12, kSeed, 43, 2).src);      // other step
  EXPECT_NE(a.src, sample_routes(rc, 16, 12, kSeed, 42, 3).src);      // other micro-batch
  EXPECT_NE(a.src, sample_routes(rc, 16, 12, kSeed + 1, 42, 2).src);  // other seed
}

TEST(Routing, RowsDoNotDependOnBatchSize) {
  // Sequence b's draws depend only on (seed, step, micro, b, l), not on B.
  RoutingConfig rc = stochastic(0.5, "any");
  RouteTable small = sample_routes(rc, 4, 12, kSeed, 9, 0);
  RouteTable large = sample_routes(rc, 32, 12, kSeed, 9, 0);
  for (int b = 0; b < 4; ++b) EXPECT_EQ(row(small, b), row(large, b));
}

// ---- granularity ----

TEST(Routing, BatchGranularitySharesOneRow) {
  for (const char* scheme : {"previous", "chain", "any"}) {
    std::set<std::vector<int32_t>> first_rows;
    for (uint64_t step = 0; step < 10; ++step) {
      RouteTable t = sample_routes(stochastic(0.5, scheme, "batch"), 32, 12, kSeed, step, 0);
      for (int b = 1; b < 32; ++b) EXPECT_EQ(row(t, b), row(t, 0)) << scheme;
      first_rows.insert(row(t, 0));
    }
    EXPECT_GT(first_rows.size(), 1u) << scheme << ": the shared row should change between steps";
  }
}

TEST(Routing, SequenceGranularityRowsDiffer) {
  for (const char* scheme : {"previous", "chain", "any"}) {
    RouteTable t = sample_routes(stochastic(0.5, scheme, "sequence"), 64, 12, kSeed, 7, 0);
    std::set<std::vector<int32_t>> rows;
    for (int b = 0; b < 64; ++b) rows.insert(row(t, b));
    EXPECT_GT(rows.size(), 32u) << scheme;
  }
}

TEST(Routing, BatchGranularityIsTheDefault) {
  RoutingConfig rc;
  rc.mode = "stochastic";
  EXPECT_EQ(rc.granularity, "batch");
  RouteTable t = sample_routes(rc, 8, 12, kSeed, 5, 0);
  for (int b = 1; b < 8; ++b) EXPECT_EQ(row(t, b), row(t, 0));
}

// ---- statistics ----

TEST(Routing, RoutingFrequencyMatchesP) {
  const double p = 0.3;
  const int B = 64, L = 12;
  for (const char* g : {"sequence", "batch"}) {
    const int steps = g == std::string("sequence") ? 200 : 2000;
    long routed = 0, total = 0;
    std::vector<long> per_layer(L, 0);
    for (int step = 0; step < steps; ++step) {
      RouteTable t = sample_routes(stochastic(p, "previous", g), B, L, kSeed, step, step % 3);
      for (int b = 0; b < B; ++b)
        for (int l = 1; l < L; ++l) {
          bool r = t.at(b, l) != l;
          routed += r;
          per_layer[l] += r;
          ++total;
        }
    }
    EXPECT_NEAR(static_cast<double>(routed) / total, p, 0.02) << g;
    for (int l = 1; l < L; ++l)
      EXPECT_NEAR(static_cast<double>(per_layer[l]) / (total / (L - 1)), p, 0.04) << g << " layer " << l;
  }
}

TEST(Routing, DecisionsOfNeighbouringLayersAreIndependent) {
  // With 'previous', P(l routes and l+1 routes) should be p^2.
  const double p = 0.5;
  long both = 0, pairs = 0;
  for (int step = 0; step < 200; ++step) {
    RouteTable t = sample_routes(stochastic(p, "previous"), 64, 12, kSeed, step, 0);
    for (int b = 0; b < 64; ++b)
      for (int l = 1; l + 1 < 12; ++l) {
        both += t.at(b, l) != l && t.at(b, l + 1) != l + 1;
        ++pairs;
      }
  }
  EXPECT_NEAR(static_cast<double>(both) / pairs, p * p, 0.02);
}

TEST(Routing, AnyIsUniformBelow) {
  const int B = 64, L = 8, steps = 500;
  std::vector<std::vector<long>> counts(L, std::vector<long>(L, 0));
  for (int step = 0; step < steps; ++step) {
    RouteTable t = sample_routes(stochastic(1.0, "any"), B, L, kSeed, step, 0);
    for (int b = 0; b < B; ++b)
      for (int l = 1; l < L; ++l) ++counts[l][t.at(b, l)];
  }
  const double n = static_cast<double>(B) * steps;
  for (int l = 2; l < L; ++l) {
    double expected = n / l, chi2 = 0;
    for (int s = 0; s < l; ++s) chi2 += (counts[l][s] - expected) * (counts[l][s] - expected) / expected;
    // l-1 degrees of freedom (at most 6); 40 is far beyond any plausible fluctuation.
    EXPECT_LT(chi2, 40.0) << "layer " << l;
  }
}

// ---- RD-CLA: a coin flip between the CLA@K group's first layer and the layer's own ----

namespace {
RoutingConfig rdcla(double p, int group, const std::string& granularity = "sequence") {
  RoutingConfig rc = stochastic(p, "rdcla", granularity);
  rc.group = group;
  return rc;
}
}  // namespace

TEST(Routing, RdClaProbabilityOneIsTheClaMap) {
  for (int k : {1, 2, 3, 4, 5})
    for (int L : {1, 4, 6, 12}) {
      RouteTable t = sample_routes(rdcla(1.0, k), 3, L, kSeed, 9, 0);
      const std::vector<int> cla = parse_strategy("cla:" + std::to_string(k), L).src;
      for (int b = 0; b < 3; ++b)
        for (int l = 0; l < L; ++l) EXPECT_EQ(t.at(b, l), cla[l]) << "k " << k << " L " << L << " layer " << l;
    }
}

TEST(Routing, RdClaProbabilityZeroAndGroupOneAreIdentity) {
  EXPECT_EQ(sample_routes(rdcla(0.0, 3), 8, 12, kSeed, 4, 0).src, identity_routes(8, 12).src);
  EXPECT_EQ(sample_routes(rdcla(0.7, 1), 8, 12, kSeed, 4, 0).src, identity_routes(8, 12).src);
}

TEST(Routing, RdClaReadsOwnOrGroupHeadAtRateP) {
  const double p = 0.6;
  const int B = 32, L = 12, K = 4, steps = 300;
  long routed = 0, coins = 0;
  for (int step = 0; step < steps; ++step) {
    RouteTable t = sample_routes(rdcla(p, K), B, L, kSeed, step, 0);
    for (int b = 0; b < B; ++b)
      for (int l = 0; l < L; ++l) {
        const int head = l / K * K;
        const int s = t.at(b, l);
        ASSERT_TRUE(s == l || s == head) << "layer " << l << " read " << s;
        if (l == head) continue;  // a group's first layer always reads itself
        routed += s == head;
        ++coins;
      }
  }
  // 300*32*9 = 86400 coins: the standard error of the rate is about 0.0017.
  EXPECT_NEAR(static_cast<double>(routed) / coins, p, 0.01);
}

TEST(Routing, RdClaBatchGranularitySharesOneRowPerStep) {
  bool rows_vary_across_steps = false;
  std::vector<int32_t> first;
  for (int step = 0; step < 20; ++step) {
    RouteTable t = sample_routes(rdcla(0.5, 2, "batch"), 6, 8, kSeed, step, 0);
    for (int b = 1; b < 6; ++b) EXPECT_EQ(row(t, b), row(t, 0));
    if (step == 0) first = row(t, 0);
    else rows_vary_across_steps |= row(t, 0) != first;
  }
  EXPECT_TRUE(rows_vary_across_steps);
}

TEST(Routing, RdClaGroupIsValidated) {
  RoutingConfig rc = rdcla(0.5, 0);
  EXPECT_NE(error_of([&] { sample_routes(rc, 2, 4, kSeed, 0, 0); }).find("routing group must be >= 1"),
            std::string::npos);
  try {
    load_config({}, {"routing.mode=stochastic", "routing.scheme=rdcla", "routing.group=0"});
    ADD_FAILURE() << "routing.group=0 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("routing.group"), std::string::npos) << e.what();
  }
  const Config ok = load_config({}, {"routing.mode=stochastic", "routing.scheme=rdcla", "routing.group=4"});
  EXPECT_EQ(ok.routing.group, 4);
}

// ---- the registry: routing.scheme's values, errors and README come from routing_schemes() ----

TEST(RoutingSchemes, ReadmeTableIsTheRegistry) {
  std::vector<std::string> rows;
  for (const RoutingScheme& s : routing_schemes()) rows.push_back(readme_row(s.name, s.doc));
  expect_readme_table("### Routing", "| scheme |", rows);
}

TEST(RoutingSchemes, EverySchemeReadsAnEarlierLayerOrItsOwn) {
  // p = 1: every layer l >= 1 reads the layer its scheme names, which must be in 0..l
  // (l itself for an rdcla group head).
  for (const RoutingScheme& s : routing_schemes())
    for (const char* granularity : {"sequence", "batch"}) {
      const RouteTable t = sample_routes(stochastic(1.0, std::string(s.name), granularity), 8, 12, kSeed, 3, 0);
      for (int b = 0; b < 8; ++b) {
        EXPECT_EQ(t.at(b, 0), 0) << s.name;
        for (int l = 1; l < 12; ++l) {
          EXPECT_GE(t.at(b, l), 0) << s.name << " l=" << l;
          EXPECT_LE(t.at(b, l), l) << s.name << " l=" << l;
        }
      }
    }
}

TEST(RoutingSchemes, ConfigAcceptsExactlyTheRegisteredNames) {
  std::string choices;
  for (const RoutingScheme& s : routing_schemes()) {
    EXPECT_EQ(load_config({}, {"routing.scheme=" + std::string(s.name)}).routing.scheme, s.name);
    choices += (choices.empty() ? "" : "|") + std::string(s.name);
  }
  try {
    load_config({}, {"routing.scheme=chian"});
    ADD_FAILURE() << "routing.scheme=chian was accepted";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("routing.scheme: expected one of " + choices + ", got 'chian' (did you mean 'chain'?)"),
              std::string::npos)
        << msg;
  }
}

TEST(RoutingSchemes, UnknownSchemeListsTheRegistryAndSuggestsTheNearest) {
  const std::string msg = error_of([] { sample_routes(stochastic(0.5, "anny"), 2, 4, kSeed, 0, 0); });
  EXPECT_NE(msg.find("unknown routing scheme 'anny' (expected previous, chain, any, rdcla) (did you mean 'any'?)"),
            std::string::npos)
      << msg;
  EXPECT_EQ(error_of([] { sample_routes(stochastic(0.5, "skip"), 2, 4, kSeed, 0, 0); }).find("did you mean"),
            std::string::npos);
}
