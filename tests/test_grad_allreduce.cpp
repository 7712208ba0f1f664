// GradAllreduce's bucketing and its overlap with backward, against a recording
// communicator (a world of two whose sums double the data), so the order and extent
// of every started sum can be checked without MPI. The real MPI path runs in
// test_distributed_mpi.cpp.
#include <gtest/gtest.h>

#include <stdexcept>
#include <utility>
#include <vector>

#include "kvroute/grad_allreduce.h"

using namespace kvroute;

namespace {

struct Started {
  std::size_t offset, n;
  bool waited = false;
};

// Sums "over two equal ranks" (data doubles) when a started sum is waited for.
class RecordingComm final : public Communicator {
 public:
  explicit RecordingComm(float* base, int world = 2) : base_(base), world_(world) {}
  int rank() const override { return 0; }
  int world_size() const override { return world_; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "recording"; }
  void allreduce_sum(float*, std::size_t) override { throw std::logic_error("GradAllreduce must start its sums"); }
  std::unique_ptr<PendingCollective> allreduce_sum_start(float* data, std::size_t n) override {
    started.push_back({static_cast<std::size_t>(data - base_), n});
    return std::make_unique<Pending>(this, started.size() - 1, data, n);
  }
  void allgather_inplace(float*, std::size_t) override {}
  void broadcast(void*, std::size_t, int) override {}
  void barrier() override {}
  double sum(double x) override { return x * world_; }
  bool any(bool flag) override { return flag; }

  std::vector<Started> started;
  int tests = 0;

 private:
  class Pending final : public PendingCollective {
   public:
    Pending(RecordingComm* c, std::size_t i, float* data, std::size_t n) : c_(c), i_(i), data_(data), n_(n) {}
    bool test() override {
      ++c_->tests;
      return c_->started[i_].waited;
    }
    void wait() override {
      if (c_->started[i_].waited) return;
      for (std::size_t k = 0; k < n_; ++k) data_[k] *= 2.f;
      c_->started[i_].waited = true;
    }

   private:
    RecordingComm* c_;
    std::size_t i_;
    float* data_;
    std::size_t n_;
  };
  float* base_;
  int world_;
};

std::vector<float> iota(std::size_t n) {
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i);
  return x;
}

}  // namespace

TEST(GradAllreduce, BucketsAreCutFromTheEndAndEachStartsOnceBackwardHasFinishedIt) {
  std::vector<float> g = iota(25);
  RecordingComm comm(g.data());
  GradAllreduce sum(comm, g.data(), g.size(), 10 * sizeof(float));  // buckets [15,25) [5,15) [0,5)
  ASSERT_EQ(sum.buckets(), 3u);
  sum.ready_from(20);  // [20, 25) final: no bucket lies inside it yet
  EXPECT_TRUE(comm.started.empty());
  sum.ready_from(15);
  ASSERT_EQ(comm.started.size(), 1u);
  EXPECT_EQ(comm.started[0].offset, 15u);
  EXPECT_EQ(comm.started[0].n, 10u);
  EXPECT_FALSE(comm.started[0].waited);
  sum.ready_from(15);  // nothing new
  sum.ready_from(17);  // a larger begin than before: nothing new either
  EXPECT_EQ(comm.started.size(), 1u);
  EXPECT_GE(comm.tests, 1) << "running sums are driven on each call";
  sum.ready_from(4);  // [5, 15) is now inside; [0, 5) is not
  ASSERT_EQ(comm.started.size(), 2u);
  EXPECT_EQ(comm.started[1].offset, 5u);
  EXPECT_EQ(comm.started[1].n, 10u);

  EXPECT_EQ(sum.finish(), 3u);
  ASSERT_EQ(comm.started.size(), 3u);
  EXPECT_EQ(comm.started[2].offset, 0u);
  EXPECT_EQ(comm.started[2].n, 5u);
  for (const Started& s : comm.started) EXPECT_TRUE(s.waited);
  EXPECT_EQ(sum.started_early(), 2u);
  for (std::size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i], 2.f * i) << i;

  // The next step starts afresh, in the same order.
  sum.ready_from(0);
  EXPECT_EQ(comm.started.size(), 6u);
  EXPECT_EQ(comm.started[3].offset, 15u);
  EXPECT_EQ(comm.started[5].offset, 0u);
  EXPECT_EQ(sum.finish(), 3u);
  EXPECT_EQ(sum.started_early(), 3u);
  for (std::size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i], 4.f * i) << i;
}

TEST(GradAllreduce, WithoutOverlapFinishStartsEveryBucketInTheSameOrder) {
  std::vector<float> g = iota(1003);
  RecordingComm comm(g.data());
  EXPECT_EQ(allreduce_in_buckets(comm, g.data(), g.size(), 10 * sizeof(float)), 101u);
  ASSERT_EQ(comm.started.size(), 101u);
  EXPECT_EQ(comm.started.front().offset, 993u);
  EXPECT_EQ(comm.started.back().offset, 0u);
  EXPECT_EQ(comm.started.back().n, 3u);
  std::size_t covered = 0;
  for (const Started& s : comm.started) covered += s.n;
  EXPECT_EQ(covered, g.size());
  for (std::size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i], 2.f * i) << i;
}

TEST(GradAllreduce, AWorldOfOneHasNothingToSum) {
  std::vector<float> g = iota(10);
  RecordingComm comm(g.data(), 1);
  GradAllreduce sum(comm, g.data(), g.size());
  sum.ready_from(0);
  EXPECT_EQ(sum.finish(), 0u);
  EXPECT_TRUE(comm.started.empty());
  EXPECT_EQ(g, iota(10));
}

TEST(GradAllreduce, RejectsABucketSmallerThanOneFloat) {
  std::vector<float> g(4);
  RecordingComm comm(g.data());
  EXPECT_THROW(GradAllreduce(comm, g.data(), g.size(), 3), std::invalid_argument);
}

TEST(GradAllreduce, DestroyingItWaitsForSumsStillRunning) {
  std::vector<float> g = iota(20);
  RecordingComm comm(g.data());
  {
    GradAllreduce sum(comm, g.data(), g.size(), 10 * sizeof(float));
    sum.ready_from(10);
    ASSERT_EQ(comm.started.size(), 1u);
  }
  EXPECT_TRUE(comm.started[0].waited);
}
