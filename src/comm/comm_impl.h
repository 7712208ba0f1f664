// Constructors of the communicator implementations (see include/kvroute/comm.h).
#pragma once

#include "kvroute/comm.h"

namespace kvroute {

std::unique_ptr<Communicator> make_single_process_communicator();
std::unique_ptr<Communicator> make_mpi_communicator();
#ifdef KVROUTE_WITH_CUDA
// Drives the GPU `backend` (a CudaBackend) runs on; collectives are ordered with its stream.
std::unique_ptr<Communicator> make_nccl_communicator(int rank, int world, int local_rank,
                                                     Backend& backend);  // cuda/
// The same for a world of one rank, without MPI (the GPU tests run it on one device).
std::unique_ptr<Communicator> make_nccl_communicator_one_rank(Backend& backend);  // cuda/
#endif

}  // namespace kvroute
