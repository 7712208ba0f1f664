// The main() of the tests that ctest starts under `mpirun -np 2` (test_*_mpi): every rank runs
// every test, rank 0 alone prints gtest's report, and the job fails if any rank's tests failed.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "kvroute/backend.h"
#include "kvroute/comm.h"

namespace kvroute::testing_mpi {

// The CPU backend and the MPI communicator the tests share; set before the tests run.
inline std::unique_ptr<Backend> g_backend;
inline std::unique_ptr<Communicator> g_comm;

inline int run_tests_on_two_ranks(int argc, char** argv, const char* name) {
  ::testing::InitGoogleTest(&argc, argv);
  if (!launched_under_mpi()) {
    std::fprintf(stderr, "%s must be started by mpirun (ctest does this)\n", name);
    return 1;
  }
  g_backend = make_backend("cpu");
  g_comm = make_communicator(*g_backend);
  if (g_comm->world_size() != 2) {
    std::fprintf(stderr, "%s expects 2 ranks, got %d\n", name, g_comm->world_size());
    return 1;
  }
  if (g_comm->rank() != 0) {  // so the ctest log is readable
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  const bool any_failed = g_comm->any(failed != 0);
  g_comm.reset();
  finalize_communication();
  return any_failed ? 1 : 0;
}

}  // namespace kvroute::testing_mpi
