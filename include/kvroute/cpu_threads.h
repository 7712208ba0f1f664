// How many OpenMP threads the CPU backend runs. Everything parallel in the CPU
// backend, oneDNN's sgemm included, runs on the one libgomp pool (Debian's
// libdnnl is built with OpenMP), so this single setting covers both.
#pragma once

#include <string>

namespace kvroute {

struct ThreadChoice {
  int threads = 1;
  std::string reason;  // e.g. "OMP_NUM_THREADS", "train.threads", "4 CPUs / 2 local MPI ranks"
};

// The decision, without side effects. In order:
//   requested > 0                      -> requested (train.threads, --threads)
//   omp_num_threads set (non-empty)    -> left to the OpenMP runtime, which honours it (threads = runtime_default)
//   the process is bound (affinity_cpus < online_cpus: the launcher or taskset pinned it)
//                                      -> affinity_cpus, whatever the number of ranks
//   local_ranks > 1 (unbound ranks sharing this machine)
//                                      -> max(1, affinity_cpus / local_ranks), so ranks do not oversubscribe
//   otherwise                          -> affinity_cpus
ThreadChoice choose_cpu_threads(int requested, const char* omp_num_threads, int runtime_default, int affinity_cpus,
                                int online_cpus, int local_ranks);

// Reads the environment (OMP_NUM_THREADS; OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS or
// SLURM_NTASKS_PER_NODE for the ranks on this node), the affinity mask and the online CPU
// count, applies choose_cpu_threads with omp_set_num_threads, and returns the choice.
ThreadChoice configure_cpu_threads(int requested);

// The CPU threading runtime of the oneDNN library loaded at run time: "OpenMP" (one pool with
// the backend's loops, as assumed above), "TBB", "threadpool", "sequential" or "unknown".
std::string onednn_threading_runtime();

}  // namespace kvroute
