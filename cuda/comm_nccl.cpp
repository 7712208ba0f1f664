// NCCL communicator for the CUDA backend. Rank 0 creates the NCCL unique id and
// broadcasts it over MPI; each rank drives the GPU picked by its local rank.
// Scalars (loss sums, stop flags) go over MPI, gradients over NCCL.
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "kvroute/comm.h"

namespace kvroute {

namespace {

void nccl_check(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) throw std::runtime_error(std::string(what) + " failed: " + ncclGetErrorString(rc));
}

void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorString(rc));
}

class Nccl final : public Communicator {
 public:
  Nccl(int rank, int world, int local_rank) : rank_(rank), world_(world), local_rank_(local_rank) {
    int devices = 0;
    cuda_check(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    if (devices == 0) throw std::runtime_error("NCCL: no CUDA device visible to rank " + std::to_string(rank));
    cuda_check(cudaSetDevice(local_rank % devices), "cudaSetDevice");
    ncclUniqueId id;
    if (rank == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    nccl_check(ncclCommInitRank(&comm_, world, id, rank), "ncclCommInitRank");
  }
  ~Nccl() override { ncclCommDestroy(comm_); }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "NCCL"; }

  // Collectives run on the default stream, which orders them after the backend's kernels.
  void allreduce_sum(float* data, std::size_t n) override {
    nccl_check(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm_, nullptr), "ncclAllReduce");
    cuda_check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  }
  void allgather_inplace(float* data, std::size_t n_per_rank) override {
    nccl_check(ncclAllGather(data + rank_ * n_per_rank, data, n_per_rank, ncclFloat, comm_, nullptr),
               "ncclAllGather");
    cuda_check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  }
  void broadcast(void* data, std::size_t bytes, int root) override {
    nccl_check(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, nullptr), "ncclBroadcast");
    cuda_check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
  }
  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }
  double sum(double x) override {
    double out = 0;
    MPI_Allreduce(&x, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return out;
  }
  bool any(bool flag) override {
    int in = flag, out = 0;
    MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
    return out != 0;
  }

 private:
  int rank_, world_, local_rank_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(int rank, int world, int local_rank) {
  return std::make_unique<Nccl>(rank, world, local_rank);
}

}  // namespace kvroute
