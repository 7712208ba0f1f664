// Picks the communicator: MPI or NCCL under a launcher, else a single process.
#include <mpi.h>

#include <cstdlib>
#include <initializer_list>

#include "comm_impl.h"
#include "kvroute/backend.h"

namespace kvroute {

bool launched_under_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"})
    if (std::getenv(var)) return true;
  return false;
}

namespace {
// The first of `vars` that starts with an integer >= min_value, else fallback.
int first_launcher_int(std::initializer_list<const char*> vars, long min_value, int fallback) {
  for (const char* var : vars) {
    const char* v = std::getenv(var);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (end != v && x >= min_value) return static_cast<int>(x);  // the leading integer, as launchers write it
  }
  return fallback;
}
}  // namespace

int launcher_local_rank() {
  return first_launcher_int({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}, 0, 0);
}

int launcher_local_size() {
  return first_launcher_int({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"}, 1, 1);
}

namespace {
bool g_mpi_initialised_here = false;
}

std::unique_ptr<Communicator> make_communicator(Backend& backend) {
  if (!launched_under_mpi()) return make_single_process_communicator();
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    g_mpi_initialised_here = true;
    // Errors come back as codes (turned into exceptions) instead of aborting silently.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  auto mpi = make_mpi_communicator();
  if (backend.device() == Device::CUDA) {
#ifdef KVROUTE_WITH_CUDA
    return make_nccl_communicator(mpi->rank(), mpi->world_size(), mpi->local_rank(), backend);
#endif
  }
  return mpi;
}

void finalize_communication() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_mpi_initialised_here && !finalized) MPI_Finalize();
}

void abort_job_if_distributed(int code) {
  int initialised = 0, finalized = 0, world = 1;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalized);
  if (!initialised || finalized) return;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace kvroute
