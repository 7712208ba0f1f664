// MPI communicator for the CPU backend: device memory is host memory, so the
// collectives are plain MPI calls on MPI_COMM_WORLD. Large buffers are sent in
// chunks so element counts stay within MPI's int range.
#include <mpi.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "comm_impl.h"

namespace kvroute {

namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string(what) + " failed: " + std::string(msg, len));
}

constexpr std::size_t kChunk = std::size_t(1) << 28;  // elements per MPI call

// MPI_Iallreduce requests, one per chunk of the buffer.
class MpiPending final : public PendingCollective {
 public:
  explicit MpiPending(std::vector<MPI_Request> requests) : requests_(std::move(requests)) {}
  ~MpiPending() override {
    // Never leave MPI writing into a buffer its owner is about to free.
    if (!requests_.empty()) MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  }
  bool test() override {
    if (requests_.empty()) return true;
    int done = 0;
    check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done, MPI_STATUSES_IGNORE),
          "MPI_Testall");
    if (done) requests_.clear();
    return done != 0;
  }
  void wait() override {
    if (requests_.empty()) return;
    const int rc = MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    requests_.clear();
    check(rc, "MPI_Iallreduce (wait)");
  }

 private:
  std::vector<MPI_Request> requests_;
};

class Mpi final : public Communicator {
 public:
  Mpi() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  std::string name() const override { return "MPI"; }

  void allreduce_sum(float* data, std::size_t n) override {
    for (std::size_t off = 0; off < n; off += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, n - off));
      check(MPI_Allreduce(MPI_IN_PLACE, data + off, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    }
  }
  std::unique_ptr<PendingCollective> allreduce_sum_start(float* data, std::size_t n) override {
    std::vector<MPI_Request> requests;
    for (std::size_t off = 0; off < n; off += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, n - off));
      requests.push_back(MPI_REQUEST_NULL);
      const int rc =
          MPI_Iallreduce(MPI_IN_PLACE, data + off, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &requests.back());
      if (rc != MPI_SUCCESS) {
        requests.pop_back();
        MpiPending started(std::move(requests));  // waits for the chunks already under way
        check(rc, "MPI_Iallreduce");
      }
    }
    return std::make_unique<MpiPending>(std::move(requests));
  }
  void allgather_inplace(float* data, std::size_t n_per_rank) override {
    if (n_per_rank > static_cast<std::size_t>(INT32_MAX)) throw std::runtime_error("allgather slice too large");
    check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, static_cast<int>(n_per_rank), MPI_FLOAT,
                        MPI_COMM_WORLD),
          "MPI_Allgather");
  }
  void broadcast(void* data, std::size_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    for (std::size_t off = 0; off < bytes; off += kChunk) {
      const int count = static_cast<int>(std::min(kChunk, bytes - off));
      check(MPI_Bcast(p + off, count, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
  }
  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  double sum(double x) override {
    double out = 0;
    check(MPI_Allreduce(&x, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    return out;
  }
  bool any(bool flag) override {
    int in = flag ? 1 : 0, out = 0;
    check(MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD), "MPI_Allreduce");
    return out != 0;
  }

 private:
  int rank_ = 0, world_ = 1, local_rank_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<Mpi>(); }

}  // namespace kvroute
