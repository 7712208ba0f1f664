// Data-parallel communication. One small interface, three implementations:
//   single process  (no launcher: every collective is the identity)
//   MPI             (CPU backend under mpirun: MPI_Allreduce and friends)
//   NCCL            (CUDA backend: the NCCL unique id is broadcast over MPI)
// Buffers live on the backend's device. The collectives below are blocking, except
// allreduce_sum_start, which starts a sum and returns a handle to finish it by.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace kvroute {

class Backend;

// A collective that has been started but not waited for. The buffer it works on must not be
// read or written until wait() returns.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  // Lets the collective advance without blocking (MPI progresses only inside MPI calls);
  // true once it is complete.
  virtual bool test() = 0;
  // Returns when the result is in place: on the host for MPI; for NCCL, when every op the
  // backend enqueues afterwards is ordered after the collective (the host does not wait).
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;   // rank among the processes on this node
  virtual std::string name() const = 0;

  // data[i] = sum over ranks of data[i], in place.
  virtual void allreduce_sum(float* data, std::size_t n) = 0;
  // The same sum, started without waiting: on a device, it runs behind the ops the backend has
  // enqueued so far, beside the ones it enqueues next. Every rank must start its collectives in
  // the same order. The default runs the blocking sum and returns a completed handle.
  virtual std::unique_ptr<PendingCollective> allreduce_sum_start(float* data, std::size_t n);
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

// This process's rank among the job's processes on its machine, as the launcher's environment
// tells it (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID); 0 without one. Known
// before MPI starts, so make_backend can pick the GPU (local rank mod GPU count) first.
int launcher_local_rank();
// The number of the job's processes on this machine, from the same launchers
// (OMPI_COMM_WORLD_LOCAL_SIZE, MPI_LOCALNRANKS, SLURM_NTASKS_PER_NODE); 1 without one.
int launcher_local_size();

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

namespace kvroute {

// A watchdog around every collective of `inner` (blocking calls, and the wait of a started
// all-reduce): one that has not completed after timeout_s seconds means another rank is
// frozen (SIGSTOP, a hung device) or lost without the launcher noticing. The watchdog thread
// then prints "rank R: error: <collective> did not complete within T s
// (train.collective_timeout_s) <context>" and ends the job (abort_job_if_distributed), so a
// scheduler can restart it. `context` is set by the caller as it goes (the step, the last
// checkpoint). Returns inner unchanged when timeout_s <= 0.
class WatchdogContext {
 public:
  virtual ~WatchdogContext() = default;
  virtual void set(const std::string& context) = 0;
};
std::unique_ptr<Communicator> with_collective_watchdog(std::unique_ptr<Communicator> inner, double timeout_s,
                                                       WatchdogContext** context);

}  // namespace kvroute
