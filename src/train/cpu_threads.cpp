#include "kvroute/cpu_threads.h"

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "kvroute/comm.h"

namespace kvroute {
namespace {

int affinity_cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  return CPU_COUNT(&set);
}

}  // namespace

ThreadChoice choose_cpu_threads(int requested, const char* omp_num_threads, int runtime_default, int affinity_cpus,
                                int online_cpus, int local_ranks) {
  if (requested > 0) return {requested, "requested"};
  if (omp_num_threads && *omp_num_threads) return {std::max(1, runtime_default), "OMP_NUM_THREADS"};
  const int cpus = std::max(1, affinity_cpus);
  if (cpus < online_cpus)
    return {cpus, std::to_string(cpus) + " of " + std::to_string(online_cpus) + " CPUs (bound by the launcher)"};
  if (local_ranks > 1)
    return {std::max(1, cpus / local_ranks),
            std::to_string(cpus) + " CPUs / " + std::to_string(local_ranks) + " local ranks"};
  return {cpus, "all " + std::to_string(cpus) + " CPUs"};
}

ThreadChoice configure_cpu_threads(int requested) {
  const int online = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  int affinity = affinity_cpu_count();
  if (affinity <= 0) affinity = std::max(1, online);
  const ThreadChoice c =
      choose_cpu_threads(requested, std::getenv("OMP_NUM_THREADS"), omp_get_max_threads(), affinity, online,
                         launcher_local_size());
  omp_set_num_threads(c.threads);
  return c;
}

std::string onednn_threading_runtime() {
  switch (dnnl_version()->cpu_runtime) {
    case DNNL_RUNTIME_OMP: return "OpenMP";
    case DNNL_RUNTIME_TBB: return "TBB";
    case DNNL_RUNTIME_THREADPOOL: return "threadpool";
    case DNNL_RUNTIME_SEQ: return "sequential";
    default: return "unknown";
  }
}

}  // namespace kvroute
