// with_collective_watchdog (comm.h): a thread that ends the job when a collective hangs.
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

#include "kvroute/comm.h"

namespace kvroute {

namespace {

using Clock = std::chrono::steady_clock;

class Watchdog final : public WatchdogContext {
 public:
  Watchdog(double timeout_s, int rank, int world)
      : timeout_s_(timeout_s), rank_(rank), world_(world), thread_([this] { watch(); }) {}
  ~Watchdog() override {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void set(const std::string& context) override {
    std::lock_guard lock(mutex_);
    context_ = context;
  }
  void enter(const char* what) {
    std::lock_guard lock(mutex_);
    if (depth_++ == 0) {
      what_ = what;
      since_ = Clock::now();
    }
  }
  void leave() {
    std::lock_guard lock(mutex_);
    --depth_;
  }

 private:
  void watch() {
    std::unique_lock lock(mutex_);
    Clock::time_point last_tick = Clock::now();
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(200));
      // A tick far later than 200 ms: this process itself was stopped (kill -STOP) or starved.
      // That time is not another rank's fault: a frozen rank, once continued (mpirun does so to
      // end the job), must not report the ranks that waited for it as the ones missing.
      const Clock::time_point now = Clock::now();
      const Clock::duration gap = now - last_tick;
      last_tick = now;
      if (gap > std::chrono::seconds(1)) since_ += gap - std::chrono::milliseconds(200);
      if (stop_ || depth_ == 0) continue;
      const double waited = std::chrono::duration<double>(Clock::now() - since_).count();
      if (waited < timeout_s_) continue;
      char seconds[32];
      std::snprintf(seconds, sizeof seconds, "%g", timeout_s_);
      const std::string text = "rank " + std::to_string(rank_) + ": error: " + what_ + " did not complete within " +
                               seconds + " s (train.collective_timeout_s)" +
                               (context_.empty() ? std::string() : " " + context_) +
                               ": rank " + std::to_string(rank_) + " arrived there and noticed; " +
                               // Of two ranks the missing one is known; of more, only that one is missing.
                               (world_ == 2 ? "rank " + std::to_string(1 - rank_) + " did not arrive (frozen, stopped, lost or unreachable)"
                                            : std::string("another rank did not arrive (frozen, stopped or lost; which "
                                                          "one this rank cannot know)")) +
                               ". Ending the job so that it can be restarted.\n";
      [[maybe_unused]] const ssize_t n = ::write(2, text.data(), text.size());
      lock.unlock();
      // MPI_Abort from this thread while the main thread is inside MPI; should the MPI library
      // not return control, a second thread ends this process regardless.
      std::thread([] {
        std::this_thread::sleep_for(std::chrono::seconds(10));
        ::_exit(1);
      }).detach();
      abort_job_if_distributed(1);
      ::_exit(1);
    }
  }

  const double timeout_s_;
  const int rank_;
  const int world_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  int depth_ = 0;
  std::string what_, context_;
  Clock::time_point since_;
  std::thread thread_;
};

class Watched {
 public:
  Watched(Watchdog& w, const char* what) : w_(w) { w_.enter(what); }
  ~Watched() { w_.leave(); }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;

 private:
  Watchdog& w_;
};

class WatchedPending final : public PendingCollective {
 public:
  WatchedPending(std::unique_ptr<PendingCollective> inner, Watchdog& w) : inner_(std::move(inner)), w_(w) {}
  ~WatchedPending() override {
    Watched g(w_, "the gradient all-reduce");
    inner_.reset();
  }
  bool test() override { return inner_->test(); }
  void wait() override {
    Watched g(w_, "the gradient all-reduce");
    inner_->wait();
  }

 private:
  std::unique_ptr<PendingCollective> inner_;
  Watchdog& w_;
};

class WatchdogCommunicator final : public Communicator {
 public:
  WatchdogCommunicator(std::unique_ptr<Communicator> inner, double timeout_s)
      : inner_(std::move(inner)), dog_(timeout_s, inner_->rank(), inner_->world_size()) {}
  Watchdog& dog() { return dog_; }
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  int local_rank() const override { return inner_->local_rank(); }
  std::string name() const override { return inner_->name(); }
  void allreduce_sum(float* data, std::size_t n) override {
    Watched g(dog_, "an all-reduce");
    inner_->allreduce_sum(data, n);
  }
  std::unique_ptr<PendingCollective> allreduce_sum_start(float* data, std::size_t n) override {
    std::unique_ptr<PendingCollective> p;
    {
      Watched g(dog_, "starting an all-reduce");
      p = inner_->allreduce_sum_start(data, n);
    }
    return std::make_unique<WatchedPending>(std::move(p), dog_);
  }
  void allgather_inplace(float* data, std::size_t n_per_rank) override {
    Watched g(dog_, "an all-gather");
    inner_->allgather_inplace(data, n_per_rank);
  }
  void broadcast(void* data, std::size_t bytes, int root) override {
    Watched g(dog_, "a broadcast");
    inner_->broadcast(data, bytes, root);
  }
  void barrier() override {
    Watched g(dog_, "a barrier");
    inner_->barrier();
  }
  double sum(double x) override {
    Watched g(dog_, "a sum over ranks");
    return inner_->sum(x);
  }
  bool any(bool flag) override {
    Watched g(dog_, "a vote over ranks");
    return inner_->any(flag);
  }

 private:
  std::unique_ptr<Communicator> inner_;  // destroyed after dog_ (declared first, destroyed last)
  Watchdog dog_;
};

}  // namespace

std::unique_ptr<Communicator> with_collective_watchdog(std::unique_ptr<Communicator> inner, double timeout_s,
                                                       WatchdogContext** context) {
  if (timeout_s <= 0) {
    if (context) *context = nullptr;
    return inner;
  }
  auto w = std::make_unique<WatchdogCommunicator>(std::move(inner), timeout_s);
  if (context) *context = &w->dog();
  return w;
}

}  // namespace kvroute
