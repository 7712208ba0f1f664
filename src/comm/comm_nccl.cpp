// NCCL communicator for the CUDA backend. Rank 0 creates the NCCL unique id and
// broadcasts it over MPI; each rank drives the GPU its CudaBackend picked (its local
// rank modulo the GPUs it sees). Scalars (loss sums, stop flags) go over MPI, buffers
// over NCCL.
//
// Streams and communicators. The backend's stream is non-blocking, so nothing on the
// legacy default stream is ordered with it. Blocking collectives (allreduce_sum,
// allgather_inplace, broadcast) run on the backend's stream, on `comm_`, and then
// synchronise it. Started sums (allreduce_sum_start) run on a second stream, on a
// communicator of their own (`overlap_comm_`, split from comm_ with the same ranks), so
// backward kernels keep running beside them: the comm stream first waits for an event
// recorded on the backend stream (the gradients written so far), and wait() makes the
// backend stream wait for the sum's completion event, without blocking the host.
//
// The ordering rule, enforced here rather than left to the callers: NCCL gives no
// guarantee that two of its kernels can progress at the same time, so on every rank the
// collectives must execute one after another, in the order they were issued (which is
// the same on every rank). A started sum is ordered after everything enqueued on the
// backend stream before it (the event above), blocking collectives included; and every
// blocking collective first makes the backend stream wait for the comm stream's last
// recorded work, so it runs after every sum started before it, waited for or not. So each
// communicator is used from one stream only, and no two collectives ever overlap.
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "cuda_backend.h"  // cuda/
#include "kvroute/comm.h"

namespace kvroute {

namespace {

void nccl_check(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) throw std::runtime_error(std::string(what) + " failed: " + ncclGetErrorString(rc));
}

void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorString(rc));
}

void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw std::runtime_error(std::string(what) + " failed (MPI error " + std::to_string(rc) + ")");
}

// A sum running on the comm stream; `done` is recorded behind it.
class NcclPending final : public PendingCollective {
 public:
  NcclPending(cudaEvent_t done, cudaStream_t backend_stream) : done_(done), backend_stream_(backend_stream) {}
  ~NcclPending() override {
    // Once waited for, the backend's stream is ordered after the sum, which is all its owner
    // needs (cudaEventDestroy of a pending event is fine). Never waited for, the host must not
    // return while the sum may still write into a buffer its owner may free or reuse.
    if (!waited_) (void)cudaEventSynchronize(done_);
    (void)cudaEventDestroy(done_);
  }
  bool test() override { return waited_ || cudaEventQuery(done_) == cudaSuccess; }
  void wait() override {
    if (waited_) return;
    cuda_check(cudaStreamWaitEvent(backend_stream_, done_, 0), "cudaStreamWaitEvent");
    waited_ = true;
  }

 private:
  cudaEvent_t done_ = nullptr;
  cudaStream_t backend_stream_;
  bool waited_ = false;
};

// With use_mpi = false (one rank, world 1: tests) the NCCL id is not broadcast and the host
// scalars (barrier, sum, any) are the identity.
class Nccl final : public Communicator {
 public:
  Nccl(int rank, int world, int local_rank, CudaBackend& backend, bool use_mpi)
      : rank_(rank), world_(world), local_rank_(local_rank), use_mpi_(use_mpi), stream_(backend.stream()) {
    cuda_check(cudaSetDevice(backend.device_ordinal()), "cudaSetDevice");
    ncclUniqueId id;
    if (rank == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (use_mpi) mpi_check(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast of the NCCL id");
    try {
      cuda_check(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
      cuda_check(cudaEventCreateWithFlags(&comm_tail_, cudaEventDisableTiming), "cudaEventCreate");
      nccl_check(ncclCommInitRank(&comm_, world, id, rank), "ncclCommInitRank");
      // Same ranks, same order. splitShare: the two never run at the same time (see the top of
      // this file), so the child may share the parent's buffers instead of doubling them.
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.splitShare = 1;
      nccl_check(ncclCommSplit(comm_, 0, rank, &overlap_comm_, &config), "ncclCommSplit");
    } catch (...) {
      release();
      throw;
    }
  }
  ~Nccl() override { release(); }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "NCCL"; }

  void allreduce_sum(float* data, std::size_t n) override {
    after_started_sums();
    nccl_check(ncclAllReduce(data, data, n, ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  std::unique_ptr<PendingCollective> allreduce_sum_start(float* data, std::size_t n) override {
    cudaEvent_t ready = nullptr, done = nullptr;
    cuda_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate");
    try {
      cuda_check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
      cuda_check(cudaEventRecord(ready, stream_), "cudaEventRecord");
      cuda_check(cudaStreamWaitEvent(comm_stream_, ready, 0), "cudaStreamWaitEvent");
      nccl_check(ncclAllReduce(data, data, n, ncclFloat, ncclSum, overlap_comm_, comm_stream_), "ncclAllReduce");
      cuda_check(cudaEventRecord(done, comm_stream_), "cudaEventRecord");
    } catch (...) {
      (void)cudaEventDestroy(ready);
      if (done) (void)cudaEventDestroy(done);
      throw;
    }
    (void)cudaEventDestroy(ready);  // released once the comm stream has passed it
    return std::make_unique<NcclPending>(done, stream_);
  }
  void allgather_inplace(float* data, std::size_t n_per_rank) override {
    after_started_sums();
    nccl_check(ncclAllGather(data + rank_ * n_per_rank, data, n_per_rank, ncclFloat, comm_, stream_),
               "ncclAllGather");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void broadcast(void* data, std::size_t bytes, int root) override {
    after_started_sums();
    nccl_check(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  void barrier() override {
    if (use_mpi_) mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }
  double sum(double x) override {
    if (!use_mpi_) return x;
    double out = 0;
    mpi_check(MPI_Allreduce(&x, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    return out;
  }
  bool any(bool flag) override {
    if (!use_mpi_) return flag;
    int in = flag, out = 0;
    mpi_check(MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD), "MPI_Allreduce");
    return out != 0;
  }

 private:
  // Before a blocking collective on the backend stream: that stream waits for every sum started
  // so far (the comm stream's work up to now). The host does not wait.
  void after_started_sums() {
    cuda_check(cudaEventRecord(comm_tail_, comm_stream_), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, comm_tail_, 0), "cudaStreamWaitEvent");
  }
  void release() noexcept {
    if (comm_stream_) (void)cudaStreamSynchronize(comm_stream_);
    if (overlap_comm_) (void)ncclCommDestroy(overlap_comm_);
    if (comm_) (void)ncclCommDestroy(comm_);
    if (comm_tail_) (void)cudaEventDestroy(comm_tail_);
    if (comm_stream_) (void)cudaStreamDestroy(comm_stream_);
    overlap_comm_ = comm_ = nullptr;
    comm_tail_ = nullptr;
    comm_stream_ = nullptr;
  }

  int rank_, world_, local_rank_;
  bool use_mpi_;
  cudaStream_t stream_;                 // the backend's: blocking collectives, on comm_
  cudaStream_t comm_stream_ = nullptr;  // started sums, on overlap_comm_
  cudaEvent_t comm_tail_ = nullptr;     // re-recorded on comm_stream_ by after_started_sums
  ncclComm_t comm_ = nullptr;
  ncclComm_t overlap_comm_ = nullptr;
};

}  // namespace

namespace {
CudaBackend& cuda_backend_of(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (!cuda) throw std::logic_error("NCCL communicator: the backend is not the CUDA backend");
  return *cuda;
}
}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(int rank, int world, int local_rank, Backend& backend) {
  return std::make_unique<Nccl>(rank, world, local_rank, cuda_backend_of(backend), true);
}

std::unique_ptr<Communicator> make_nccl_communicator_one_rank(Backend& backend) {
  return std::make_unique<Nccl>(0, 1, 0, cuda_backend_of(backend), false);
}

}  // namespace kvroute
