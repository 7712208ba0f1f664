// Data-parallel communication. One small interface, three implementations:
//   single process  (no launcher: every collective is the identity)
//   MPI             (CPU backend under mpirun: MPI_Allreduce and friends)
//   NCCL            (CUDA backend: the NCCL unique id is broadcast over MPI)
// Buffers live on the backend's device. All collectives are blocking.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace kvroute {

class Backend;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;   // rank among the processes on this node
  virtual std::string name() const = 0;

  // data[i] = sum over ranks of data[i], in place.
  virtual void allreduce_sum(float* data, std::size_t n) = 0;
  // Rank r contributes data[r*n_per_rank .. (r+1)*n_per_rank) in place; afterwards every
  // rank holds every rank's slice.
  virtual void allgather_inplace(float* data, std::size_t n_per_rank) = 0;
  virtual void broadcast(void* data, std::size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Host-side scalars: sum over ranks; logical OR over ranks.
  virtual double sum(double x) = 0;
  virtual bool any(bool flag) = 0;
};

// True when this process was started by an MPI launcher (mpirun/srun).
bool launched_under_mpi();

// Initialises MPI when launched under mpirun (once per process), then returns the
// communicator for the backend: MPI for "cpu", NCCL for "cuda" (when built with CUDA),
// or the single-process communicator when not launched under MPI.
std::unique_ptr<Communicator> make_communicator(Backend& backend);

// Finalises MPI if it was initialised (call once, at exit).
void finalize_communication();

// For a fatal error on this rank (the caller has printed the message): when MPI is
// initialised and the job has more than one rank, ends every rank of the job with
// MPI_Abort(code), so the others do not wait forever in a collective this rank will
// never join. Otherwise returns and the caller exits as usual.
void abort_job_if_distributed(int code);

}  // namespace kvroute
