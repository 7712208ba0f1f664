// The single-process communicator: a world of one, every collective is the identity.
#include "comm_impl.h"

namespace kvroute {

namespace {
class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string name() const override { return "single process"; }
  void allreduce_sum(float*, std::size_t) override {}
  void allgather_inplace(float*, std::size_t) override {}
  void broadcast(void*, std::size_t, int) override {}
  void barrier() override {}
  double sum(double x) override { return x; }
  bool any(bool flag) override { return flag; }
};
}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() { return std::make_unique<SingleProcess>(); }

}  // namespace kvroute
