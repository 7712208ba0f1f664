// cuDNN fused attention through cudnn-frontend's graph API (cudnn_attention.h says what it
// computes). One graph per CudnnSdpaKey, built on first use and kept: forward
//   O, Stats = SDPA(Q, K, V), causal (top-left diagonal, no keys right of it), scale baked in,
//   Stats = max + log(sum exp) of the scaled scores: kvroute's lse;
// backward
//   dQ, dK, dV = SDPA_backward(Q, K, V, O, dO, Stats), cuDNN's deterministic algorithm when
//   the backend is deterministic.
// bf16 I/O, fp32 intermediates and compute. Q/O [B, T, H, D] and K/V [B, T, Hkv, D] strides
// (cudnn_attention_plan.h): GQA comes from Hkv < H, with no copy of K/V per query head.
// cuDNN is loaded at run time (cudnn-frontend's NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING, set by
// CMake): no binary links libcudnn, so they all start on a machine without it, where create()
// says so and the backend keeps its own kernels.
#include "cudnn_attention.h"

#include <dlfcn.h>

#include <cudnn_frontend.h>

#include <map>
#include <stdexcept>
#include <unordered_map>

// The handle cudnn-frontend's loader takes cuDNN's functions from (load_cudnn opens it).
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend

namespace kvroute {
namespace {

namespace fe = cudnn_frontend;

// Opens libcudnn.so.<major> once (it opens its sub-libraries itself). False, with *why set,
// when it cannot be found (LD_LIBRARY_PATH, ldconfig).
bool load_cudnn(std::string* why) {
  static std::string error;
  static const bool loaded = [] {
    const std::string name = "libcudnn.so." + std::to_string(CUDNN_MAJOR);
    fe::cudnn_dlhandle = dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!fe::cudnn_dlhandle) error = "cannot load " + name + ": " + dlerror();
    return fe::cudnn_dlhandle != nullptr;
  }();
  if (!loaded) *why = error;
  return loaded;
}

// Tensor uids of the variant pack.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kdO, kdQ, kdK, kdV };

std::shared_ptr<fe::graph::Tensor_attributes> add_tensor(fe::graph::Graph& g, const char* name, int64_t uid,
                                                         const CudnnTensorLayout& l) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({l.dim[0], l.dim[1], l.dim[2], l.dim[3]})
                      .set_stride({l.stride[0], l.stride[1], l.stride[2], l.stride[3]}));
}
void set_output(const std::shared_ptr<fe::graph::Tensor_attributes>& t, int64_t uid, const CudnnTensorLayout& l) {
  t->set_output(true)
      .set_uid(uid)
      .set_dim({l.dim[0], l.dim[1], l.dim[2], l.dim[3]})
      .set_stride({l.stride[0], l.stride[1], l.stride[2], l.stride[3]});
}

// The graph of `key`, described but not yet validated or built. sm_version > 0 describes it for
// that GPU (with sm_count SMs) instead of asking the current device: set before the nodes are
// added, which copy the graph's context.
std::shared_ptr<fe::graph::Graph> describe_graph(const CudnnSdpaKey& key, int sm_version = 0, int sm_count = 0) {
  auto g = std::make_shared<fe::graph::Graph>();
  if (sm_version > 0) g->set_sm_version(sm_version).set_sm_count(sm_count);
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  const CudnnTensorLayout q_layout = cudnn_bthd_layout(key.B, key.T, key.H, key.D);
  const CudnnTensorLayout kv_layout = cudnn_bthd_layout(key.B, key.T, key.Hkv, key.D);
  const CudnnTensorLayout stats_layout = cudnn_stats_layout(key.B, key.H, key.T);
  auto q = add_tensor(*g, "Q", kQ, q_layout);
  auto k = add_tensor(*g, "K", kK, kv_layout);
  auto v = add_tensor(*g, "V", kV, kv_layout);
  if (!key.backward) {
    auto sdpa = fe::graph::SDPA_attributes()
                    .set_name("sdpa")
                    .set_generate_stats(true)
                    .set_attn_scale(key.scale())
                    .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                    .set_diagonal_band_right_bound(0);  // causal: no key after the query
    auto [o, stats] = g->sdpa(q, k, v, sdpa);
    set_output(o, kO, q_layout);
    set_output(stats, kStats, stats_layout);
    stats->set_data_type(fe::DataType_t::FLOAT);
    return g;
  }
  auto o = add_tensor(*g, "O", kO, q_layout);
  auto dout = add_tensor(*g, "dO", kdO, q_layout);
  auto stats = add_tensor(*g, "Stats", kStats, stats_layout);
  stats->set_data_type(fe::DataType_t::FLOAT);
  auto sdpa = fe::graph::SDPA_backward_attributes()
                  .set_name("sdpa_backward")
                  .set_attn_scale(key.scale())
                  .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
                  .set_diagonal_band_right_bound(0)
                  .set_deterministic_algorithm(key.deterministic);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, sdpa);
  set_output(dq, kdQ, q_layout);
  set_output(dk, kdK, kv_layout);
  set_output(dv, kdV, kv_layout);
  return g;
}

void check(fe::error_t e, const char* step, const CudnnSdpaKey& key) {
  if (e.is_bad())
    throw std::runtime_error(std::string("cuDNN attention ") + (key.backward ? "backward" : "forward") + " (B " +
                             std::to_string(key.B) + ", T " + std::to_string(key.T) + ", heads " +
                             std::to_string(key.H) + "/" + std::to_string(key.Hkv) + ", head_dim " +
                             std::to_string(key.D) + "): " + step + ": " + e.get_message());
}

}  // namespace

struct CudnnAttention::Impl {
  cudnnHandle_t handle = nullptr;
  struct Built {
    std::shared_ptr<fe::graph::Graph> graph;
    std::size_t workspace = 0;
  };
  std::map<CudnnSdpaKey, Built> graphs;

  const Built& built(const CudnnSdpaKey& key) {
    auto it = graphs.find(key);
    if (it != graphs.end()) return it->second;
    auto g = describe_graph(key);
    check(g->validate(), "validate", key);
    check(g->build_operation_graph(handle), "build_operation_graph", key);
    check(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", key);
    check(g->check_support(handle), "check_support", key);
    check(g->build_plans(handle), "build_plans", key);
    int64_t ws = 0;
    check(g->get_workspace_size(ws), "get_workspace_size", key);
    return graphs.emplace(key, Built{std::move(g), static_cast<std::size_t>(ws)}).first->second;
  }
};

CudnnAttention::CudnnAttention(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CudnnAttention::~CudnnAttention() {
  if (!impl_) return;
  impl_->graphs.clear();  // their plans before the handle
  if (impl_->handle) fe::detail::destroy_handle(impl_->handle);
}

std::unique_ptr<CudnnAttention> CudnnAttention::create(CUstream_st* stream, std::string* why) {
  if (!load_cudnn(why)) return nullptr;
  try {
    // The library must be at least the version the headers describe.
    const std::size_t runtime = fe::detail::get_backend_version();
    if (runtime < CUDNN_VERSION) {
      *why = "the cuDNN library is version " + std::to_string(runtime) + ", older than the " +
             std::to_string(CUDNN_VERSION) + " kvroute was built against";
      return nullptr;
    }
    auto impl = std::make_unique<Impl>();
    const cudnnStatus_t st = fe::detail::create_handle(&impl->handle);
    if (st != CUDNN_STATUS_SUCCESS) {  // no driver or no GPU
      impl->handle = nullptr;
      *why = std::string("cudnnCreate failed: ") + fe::detail::get_error_string(st);
      return nullptr;
    }
    const cudnnStatus_t ss = fe::detail::set_stream(impl->handle, stream);
    if (ss != CUDNN_STATUS_SUCCESS) {
      fe::detail::destroy_handle(impl->handle);
      *why = std::string("cudnnSetStream failed: ") + fe::detail::get_error_string(ss);
      return nullptr;
    }
    return std::unique_ptr<CudnnAttention>(new CudnnAttention(std::move(impl)));
  } catch (const std::exception& e) {  // the loader throws when a function is missing
    *why = e.what();
    return nullptr;
  }
}

std::size_t CudnnAttention::workspace_bytes(const CudnnSdpaKey& key) { return impl_->built(key).workspace; }

std::size_t CudnnAttention::graphs_built() const { return impl_->graphs.size(); }

void CudnnAttention::run(const CudnnSdpaKey& key, const CudnnSdpaTensors& t, void* workspace) {
  const Impl::Built& b = impl_->built(key);
  std::unordered_map<int64_t, void*> pack{{kQ, const_cast<void*>(t.q)},
                                          {kK, const_cast<void*>(t.k)},
                                          {kV, const_cast<void*>(t.v)},
                                          {kO, t.o},
                                          {kStats, t.stats}};
  if (key.backward) {
    pack.emplace(kdO, const_cast<void*>(t.dout));
    pack.emplace(kdQ, t.dq);
    pack.emplace(kdK, t.dk);
    pack.emplace(kdV, t.dv);
  }
  check(b.graph->execute(impl_->handle, pack, workspace), "execute", key);
}

std::string cudnn_validate_sdpa_graph(const CudnnSdpaKey& key, int sm_version, int sm_count) {
  std::string why;
  if (!load_cudnn(&why)) return why;
  try {
    auto g = describe_graph(key, sm_version, sm_count);
    fe::error_t e = g->validate();
    return e.is_good() ? std::string() : e.get_message();
  } catch (const std::exception& e) {
    return e.what();
  }
}

bool cudnn_attention_built() { return true; }

}  // namespace kvroute
