// pybind11 binding layer of the CUDA backend, compiled into sparsessm_kernels._C.
//
// Checks every tensor (device, dtype, shape, strides) with an error that names the argument,
// fills a sparsessm::SelectiveScanParams (csrc/selective_scan/selective_scan.h) and launches the
// kernels on the current CUDA stream of the input's device. Python callers go through
// sparsessm_kernels.ops.selective_scan.cuda_backend.selective_scan_cuda, which also casts mixed
// dtypes and fixes strides before calling in here.
//
// With SPARSESSM_EMULATE defined this same file builds a CPU module around the host emulation of
// the kernels (tests/cuda_emulation/): tensors must then be CPU tensors.
#include <torch/extension.h>

#if !defined(SPARSESSM_EMULATE)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#else
#include "emulation/cuda_emulation.h"
#endif

#include <optional>
#include <string>
#include <tuple>

#include "selective_scan/selective_scan.h"

// The build passes the targeted architectures as one shell-safe token, e.g. sm_80_sm_90a.
#define SPARSESSM_STRINGIFY_(x) #x
#define SPARSESSM_STRINGIFY(x) SPARSESSM_STRINGIFY_(x)
#ifdef SPARSESSM_CUDA_ARCHS_TOKEN
#define SPARSESSM_CUDA_ARCHS SPARSESSM_STRINGIFY(SPARSESSM_CUDA_ARCHS_TOKEN)
#else
#define SPARSESSM_CUDA_ARCHS "unknown"
#endif

namespace {

using sparsessm::PrunedStates;
using sparsessm::ScalarType;
using sparsessm::SelectiveScanParams;
using sparsessm::StateMode;

#if defined(SPARSESSM_EMULATE)
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif

// Numbers in error messages are formatted with std::to_string, never streamed: an extension built
// by a toolchain whose libstdc++ differs from torch's can crash inside the numeric facets of the
// ostream that c10::str uses (seen on an H100 machine: a segfault in _M_insert<long> while raising).
std::string num(int64_t v) { return std::to_string(v); }

std::string dims_str(at::IntArrayRef dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + (dims.size() == 1 ? ",)" : ")");
}

std::string shape_str(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + (t.dim() == 1 ? ",)" : ")");
}

void check_device(const char* name, const at::Tensor& t, const at::Tensor& ref) {
  if (kEmulated) {
    TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": the emulated extension takes CPU tensors, got ", t.device());
    return;
  }
  TORCH_CHECK_VALUE(t.is_cuda(), name, ": expected a CUDA tensor, got a tensor on ", t.device());
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(),
                    " (the device of u), got ", t.device());
}

void check_shape(const char* name, const at::Tensor& t, at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, name, ": expected shape ", meaning, " = ", dims_str(expected), ", got ",
                    shape_str(t));
}

// u, delta and z are read with stride 1 along l (any stride when l == 1); B and C with any strides.
void check_last_stride(const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.size(-1) == 1 || t.stride(-1) == 1, name,
                    ": expected stride 1 along the last (sequence) dimension, got strides ", dims_str(t.strides()),
                    " (call .contiguous())");
}

ScalarType scalar_type_of(const at::Tensor& u) {
  switch (u.scalar_type()) {
    case at::kFloat:
      return ScalarType::kFloat32;
    case at::kHalf:
      return ScalarType::kFloat16;
    case at::kBFloat16:
      return ScalarType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "u: expected dtype float32, float16 or bfloat16, got ", u.scalar_type());
  }
  return ScalarType::kFloat32;
}

void check_dtype(const char* name, const at::Tensor& t, at::ScalarType expected, const char* why) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, name, ": expected dtype ", expected, " (", why, "), got ",
                   t.scalar_type());
}

std::tuple<at::Tensor, std::optional<at::Tensor>> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus, bool return_last_state,
    const std::optional<at::Tensor>& kept_idx, const std::optional<at::Tensor>& kept_count,
    const std::string& pruned_states, int64_t time_segments) {
  // ---- shapes and dtypes
  TORCH_CHECK_VALUE(u.dim() == 3, "u: expected shape (b, d, l), got ", shape_str(u));
  const int64_t b = u.size(0), d = u.size(1), l = u.size(2);
  TORCH_CHECK_VALUE(b >= 1 && d >= 1 && l >= 1, "u: expected non-empty (b, d, l), got ", shape_str(u));
  const ScalarType dtype = scalar_type_of(u);
  const at::ScalarType seq_type = u.scalar_type();
  check_device("u", u, u);
  check_last_stride("u", u);

  check_device("delta", delta, u);
  check_shape("delta", delta, {b, d, l}, "(b, d, l)");
  check_dtype("delta", delta, seq_type, "the dtype of u");
  check_last_stride("delta", delta);

  check_device("A", A, u);
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == d, "A: expected shape (d, n) with d=", num(d), ", got ",
                    shape_str(A));
  const int64_t n = A.size(1);
  TORCH_CHECK_VALUE(n >= 1 && n <= sparsessm::kMaxStates, "A: expected 1 <= n <= ", num(sparsessm::kMaxStates),
                    " states, got n=", num(n));
  check_dtype("A", A, at::kFloat, "real float32");

  int64_t groups[2] = {1, 1};
  const at::Tensor* bc[2] = {&B, &C};
  const char* bc_names[2] = {"B", "C"};
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& t = *bc[i];
    const char* name = bc_names[i];
    check_device(name, t, u);
    check_dtype(name, t, seq_type, "the dtype of u");
    if (t.dim() == 3) {
      check_shape(name, t, {b, n, l}, "(b, n, l)");
    } else {
      TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == b && t.size(2) == n && t.size(3) == l && t.size(1) >= 1 &&
                            d % t.size(1) == 0,
                        name, ": expected shape (b, n, l) = (", num(b), ", ", num(n), ", ", num(l),
                        ") or grouped (b, g, n, l) with g dividing d=", num(d), ", got ", shape_str(t));
      groups[i] = t.size(1);
    }
  }

  if (z.has_value()) {
    check_device("z", *z, u);
    check_shape("z", *z, {b, d, l}, "(b, d, l)");
    check_dtype("z", *z, seq_type, "the dtype of u");
    check_last_stride("z", *z);
  }
  const std::optional<at::Tensor>* per_channel[2] = {&D, &delta_bias};
  const char* per_channel_names[2] = {"D", "delta_bias"};
  for (int i = 0; i < 2; ++i) {
    if (!per_channel[i]->has_value()) continue;
    const at::Tensor& t = **per_channel[i];
    check_device(per_channel_names[i], t, u);
    check_shape(per_channel_names[i], t, {d}, "(d,)");
    check_dtype(per_channel_names[i], t, at::kFloat, "float32");
    TORCH_CHECK_VALUE(t.is_contiguous(), per_channel_names[i], ": expected a contiguous tensor");
  }

  PrunedStates pruned;
  if (pruned_states == "zero_transition") {
    pruned = PrunedStates::kZeroTransition;
  } else if (pruned_states == "remove") {
    pruned = PrunedStates::kRemove;
  } else {
    TORCH_CHECK_VALUE(false, "pruned_states: expected 'zero_transition' or 'remove', got '", pruned_states, "'");
  }
  TORCH_CHECK_VALUE(time_segments == 0 || (time_segments > 0 && time_segments <= 128 &&
                                           (time_segments & (time_segments - 1)) == 0),
                    "time_segments: expected 0 (auto) or a power of two <= 128, got ", num(time_segments));

  SelectiveScanParams p;
  p.mode = StateMode::kDense;
  if (kept_idx.has_value()) {
    const at::Tensor& ki = *kept_idx;
    check_device("kept_idx", ki, u);
    check_dtype("kept_idx", ki, at::kInt, "int32, from StateLayout");
    TORCH_CHECK_VALUE(ki.is_contiguous(), "kept_idx: expected a contiguous tensor");
    if (ki.dim() == 1) {
      TORCH_CHECK_VALUE(ki.size(0) <= n, "kept_idx: a column mask keeps at most n=", num(n), " states, got shape ",
                        shape_str(ki));
      p.mode = StateMode::kColumn;
      p.n_kept = static_cast<int>(ki.size(0));
    } else {
      TORCH_CHECK_VALUE(ki.dim() == 2 && ki.size(0) == d && ki.size(1) <= n, "kept_idx: expected shape (k,) or (d, k_max) with d=",
                        num(d), " and k_max <= n=", num(n), ", got ", shape_str(ki));
      TORCH_CHECK_VALUE(kept_count.has_value(), "kept_count: required with a per-channel kept_idx (d, k_max)");
      p.mode = StateMode::kChannel;
      p.n_kept = static_cast<int>(ki.size(1));
      p.kept_idx_row_stride = ki.size(1);
    }
    p.kept_idx = ki.numel() > 0 ? ki.data_ptr<int32_t>() : nullptr;
  }
  if (p.mode == StateMode::kChannel) {
    const at::Tensor& kc = *kept_count;
    check_device("kept_count", kc, u);
    check_dtype("kept_count", kc, at::kInt, "int32, from StateLayout");
    check_shape("kept_count", kc, {d}, "(d,)");
    TORCH_CHECK_VALUE(kc.is_contiguous(), "kept_count: expected a contiguous tensor");
    p.kept_count = kc.data_ptr<int32_t>();
  } else {
    TORCH_CHECK_VALUE(!kept_count.has_value(), "kept_count: only valid with a per-channel kept_idx (d, k_max)");
  }

#if !defined(SPARSESSM_EMULATE)
  const c10::cuda::CUDAGuard device_guard(u.device());
#endif

  // ---- outputs
  at::Tensor out = at::empty({b, d, l}, u.options());
  std::optional<at::Tensor> last_state;
  if (return_last_state) last_state = at::empty({b, d, n}, u.options().dtype(at::kFloat));

  // ---- params
  p.batch = static_cast<int>(b);
  p.dim = static_cast<int>(d);
  p.seqlen = static_cast<int>(l);
  p.dstate = static_cast<int>(n);
  TORCH_CHECK_VALUE(b <= 65535, "u: at most 65535 batch rows, got b=", num(b));
  TORCH_CHECK_VALUE(d <= INT32_MAX && l <= INT32_MAX, "u: d and l must fit in int32, got ", shape_str(u));
  p.n_groups_B = static_cast<int>(groups[0]);
  p.n_groups_C = static_cast<int>(groups[1]);
  p.dtype = dtype;
  p.u = u.data_ptr();
  p.u_batch_stride = u.stride(0);
  p.u_dim_stride = u.stride(1);
  p.delta = delta.data_ptr();
  p.delta_batch_stride = delta.stride(0);
  p.delta_dim_stride = delta.stride(1);
  if (z.has_value()) {
    p.z = z->data_ptr();
    p.z_batch_stride = z->stride(0);
    p.z_dim_stride = z->stride(1);
  }
  p.out = out.data_ptr();
  p.out_batch_stride = out.stride(0);
  p.out_dim_stride = out.stride(1);
  p.B = B.data_ptr();
  p.B_batch_stride = B.stride(0);
  p.B_group_stride = B.dim() == 4 ? B.stride(1) : 0;
  p.B_dstate_stride = B.stride(-2);
  p.B_seqlen_stride = B.stride(-1);
  p.C = C.data_ptr();
  p.C_batch_stride = C.stride(0);
  p.C_group_stride = C.dim() == 4 ? C.stride(1) : 0;
  p.C_dstate_stride = C.stride(-2);
  p.C_seqlen_stride = C.stride(-1);
  p.A = A.data_ptr<float>();
  p.A_dim_stride = A.stride(0);
  p.A_dstate_stride = A.stride(1);
  p.D = D.has_value() ? D->data_ptr<float>() : nullptr;
  p.delta_bias = delta_bias.has_value() ? delta_bias->data_ptr<float>() : nullptr;
  p.delta_softplus = delta_softplus;
  p.pruned_states = pruned;
  if (last_state.has_value()) {
    p.last_state = last_state->data_ptr<float>();
    p.last_state_batch_stride = last_state->stride(0);
    p.last_state_dim_stride = last_state->stride(1);
    p.last_state_dstate_stride = last_state->stride(2);
  }
  p.time_segments = static_cast<int>(time_segments);

  at::Tensor workspace;
  const size_t ws_bytes = sparsessm::selective_scan_fwd_workspace_bytes(p);
  if (ws_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(ws_bytes)}, u.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
    p.workspace_bytes = ws_bytes;
  }

  if (const char* err = sparsessm::selective_scan_fwd_check(p)) {
    TORCH_CHECK_VALUE(false, "sparsessm selective_scan (cuda): invalid parameters: ", err);
  }
#if defined(SPARSESSM_EMULATE)
  const cudaStream_t stream = nullptr;
#else
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(u.device().index()).stream();
#endif
  const cudaError_t status = sparsessm::selective_scan_fwd(p, stream);
#if defined(SPARSESSM_EMULATE)
  TORCH_CHECK(status == cudaSuccess, "sparsessm selective_scan (emulated): launch failed with status ",
              num(static_cast<int>(status)), ": ", sparsessm_emu::last_error());
#else
  TORCH_CHECK(status == cudaSuccess, "sparsessm selective_scan (cuda): kernel launch failed: ",
              cudaGetErrorString(status), " (this build of sparsessm_kernels._C targets CUDA archs ",
              SPARSESSM_CUDA_ARCHS, "; rebuild with SPARSESSM_CUDA_ARCHS set to include this GPU)");
#endif
  return {out, last_state};
}

int64_t time_segments_for(int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t n_kept) {
  SelectiveScanParams p;
  p.batch = static_cast<int>(batch);
  p.dim = static_cast<int>(dim);
  p.seqlen = static_cast<int>(seqlen);
  p.dstate = static_cast<int>(dstate);
  p.mode = n_kept < 0 ? StateMode::kDense : StateMode::kColumn;
  p.n_kept = n_kept < 0 ? 0 : static_cast<int>(n_kept);
  return sparsessm::selective_scan_fwd_time_segments(p);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparsessm_kernels CUDA backend: sparse selective scan kernels (csrc/selective_scan)";
  m.def("selective_scan_fwd", &selective_scan_fwd, "Sparse selective scan forward (see docs/cuda.md)",
        py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D") = py::none(),
        py::arg("z") = py::none(), py::arg("delta_bias") = py::none(), py::arg("delta_softplus") = false,
        py::arg("return_last_state") = false, py::arg("kept_idx") = py::none(),
        py::arg("kept_count") = py::none(), py::arg("pruned_states") = "zero_transition",
        py::arg("time_segments") = 0);
  m.def("time_segments_for", &time_segments_for,
        "Time segments (lanes per channel) the launcher picks on the current device; n_kept < 0 = dense",
        py::arg("batch"), py::arg("dim"), py::arg("seqlen"), py::arg("dstate"), py::arg("n_kept") = -1);
  m.attr("cuda_archs") = SPARSESSM_CUDA_ARCHS;
  m.attr("emulated") = kEmulated;
}
