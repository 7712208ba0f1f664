// Collectives of the MPI communicator, run by ctest as `mpirun -np 2 test_comm_mpi`.
// Each rank checks the results against values computed locally from the rank ids.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "kvroute/backend.h"
#include "kvroute/comm.h"
#include "mpi_test_main.h"

using namespace kvroute;
using testing_mpi::g_comm;

TEST(CommMpi, WorldHasTwoRanks) {
  EXPECT_EQ(g_comm->name(), "MPI");
  EXPECT_EQ(g_comm->world_size(), 2);
  EXPECT_GE(g_comm->rank(), 0);
  EXPECT_LT(g_comm->rank(), 2);
}

TEST(CommMpi, AllreduceSumsEveryElement) {
  const int r = g_comm->rank();
  std::vector<float> x(1001);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i * (r + 1));
  g_comm->allreduce_sum(x.data(), x.size());
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], static_cast<float>(i * 3)) << i;
}

TEST(CommMpi, AllgatherCollectsEachRanksSlice) {
  const int r = g_comm->rank();
  const std::size_t n = 7;
  std::vector<float> x(2 * n, -1.f);
  for (std::size_t i = 0; i < n; ++i) x[r * n + i] = static_cast<float>(100 * r + i);
  g_comm->allgather_inplace(x.data(), n);
  for (int rr = 0; rr < 2; ++rr)
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(x[rr * n + i], static_cast<float>(100 * rr + i));
}

TEST(CommMpi, BroadcastScalarsAndFlags) {
  const int r = g_comm->rank();
  int value = r == 1 ? 42 : 0;
  g_comm->broadcast(&value, sizeof value, 1);
  EXPECT_EQ(value, 42);
  EXPECT_DOUBLE_EQ(g_comm->sum(r + 0.5), 2.0);
  EXPECT_TRUE(g_comm->any(r == 1));
  EXPECT_FALSE(g_comm->any(false));
  g_comm->barrier();
}

TEST(CommMpi, TwoStartedSumsInFlightAtOnceBothComplete) {
  const int r = g_comm->rank();
  std::vector<float> a(3000), b(5);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i * (r + 1));
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(r + i);
  auto pa = g_comm->allreduce_sum_start(a.data(), a.size());
  auto pb = g_comm->allreduce_sum_start(b.data(), b.size());
  while (!pa->test()) {
  }
  pb->wait();
  pa->wait();  // after test() said done: returns at once
  EXPECT_TRUE(pb->test());
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], static_cast<float>(i * 3)) << i;
  for (std::size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], static_cast<float>(1 + 2 * i)) << i;
}

// mpirun tells each process its rank on the node (both ranks of this test run on one machine).
TEST(CommMpi, TheLauncherGivesTheLocalRankAndSizeBeforeMpiDoes) {
  EXPECT_EQ(launcher_local_rank(), g_comm->local_rank());
  EXPECT_EQ(launcher_local_size(), 2);
}

int main(int argc, char** argv) { return testing_mpi::run_tests_on_two_ranks(argc, argv, "test_comm_mpi"); }
