// A Backend that forwards every call to the backend it wraps: the base of the decorators
// (ProfilingBackend, the tests' counting backends), which override only what they add.
// Its op bodies are generated from KVROUTE_BACKEND_OPS (backend.h), so a new op needs no
// edit here. Each op passes through around(op, call), which by default just makes the call;
// a decorator that treats every op alike (timing them) overrides around() alone.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include "kvroute/backend.h"

namespace kvroute {

class ForwardingBackend : public Backend {
 public:
  // inner must outlive this object.
  explicit ForwardingBackend(Backend* inner) : inner_(inner) {}
  // Owns inner.
  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : owned_(std::move(inner)), inner_(owned_.get()) {}

  Backend* inner() const { return inner_; }

  Device device() const override { return inner_->device(); }
  std::string name() const override { return inner_->name(); }
  void* alloc_bytes(std::size_t bytes) override { return inner_->alloc_bytes(bytes); }
  void free_bytes(void* p) override { inner_->free_bytes(p); }
  void synchronize() override { inner_->synchronize(); }
  BackendMemory memory() const override { return inner_->memory(); }
  double peak_gemm_flops(int n) override { return inner_->peak_gemm_flops(n); }
  std::string peak_gemm_label() const override { return inner_->peak_gemm_label(); }
  void register_weights(const float* w, std::size_t n) override { inner_->register_weights(w, n); }

#define KVROUTE_FORWARD_OP(ret, name, params, args) \
  ret name params override {                       \
    return forward<ret>(#name, [&] { return inner_->name args; }); \
  }
  KVROUTE_BACKEND_OPS(KVROUTE_FORWARD_OP)
#undef KVROUTE_FORWARD_OP

 protected:
  // One op's call on the inner backend, as around() receives it (valid during around() only).
  class OpCall {
   public:
    template <typename Fn>
    explicit OpCall(Fn& fn) : fn_(&fn), call_([](void* f) { (*static_cast<Fn*>(f))(); }) {}
    void operator()() const { call_(fn_); }

   private:
    void* fn_;
    void (*call_)(void*);
  };
  // Every op of KVROUTE_BACKEND_OPS runs through here (op: its name, e.g. "matmul"), unless a
  // decorator overrides the op itself. Must run call exactly once.
  virtual void around(const char* op, const OpCall& call) {
    (void)op;
    call();
  }

 private:
  template <typename R, typename Fn>
  R forward(const char* op, Fn&& fn) {
    if constexpr (std::is_void_v<R>) {
      around(op, OpCall(fn));
    } else {
      R result{};
      auto store = [&] { result = fn(); };
      around(op, OpCall(store));
      return result;
    }
  }

  std::unique_ptr<Backend> owned_;
  Backend* inner_;
};

}  // namespace kvroute
