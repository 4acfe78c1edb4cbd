// Sparse selective scan (Mamba-1 prefill), forward only: the public, framework-free C++ API.
//
// No torch headers anywhere under csrc/: a caller fills a SelectiveScanParams (raw device pointers,
// element strides, sizes, flags) and calls selective_scan_fwd() on a cudaStream_t. The Python
// binding (python/bindings.cpp), the standalone test and the micro-benchmark (csrc/tests/) are
// three such callers. The exact semantics are those of docs/semantics.md (oracle:
// sparsessm_kernels/ops/selective_scan/reference.py); the design is described in
// selective_scan_kernel.cuh and docs/cuda.md.
//
// Tensors (b = batch, d = channels, l = sequence length, n = states, k = kept states):
//   u, delta, z, out  (b, d, l)                  dtype = params.dtype, stride 1 along l
//   B, C              (b, n, l) or (b, g, n, l)  dtype = params.dtype, any strides (0 included, e.g.
//                                                an expanded view; unit stride along l is the fast path)
//   A                 (d, n)  float32, any strides
//   D, delta_bias     (d,)    float32, contiguous, optional
//   kept_idx          int32   (k,) column mask, or (d, k_max) per-channel rows (ascending,
//                             zero-padded past kept_count[c]); unused when dense
//   kept_count        int32   (d,) per-channel masks only
//   last_state        (b, d, n) float32, optional; pruned entries are written as 0
//   workspace         device scratch of selective_scan_fwd_workspace_bytes() bytes, 16-byte aligned
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace sparsessm {

enum class ScalarType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Which states recur.
enum class StateMode : int {
  kDense = 0,    // all n states (kept_idx unused)
  kColumn = 1,   // the same k states in every channel: kept_idx (k,)
  kChannel = 2,  // per channel (unstructured, N:M): kept_idx (d, k_max), kept_count (d,)
};

// What a pruned (channel, state) means (docs/semantics.md, "Sparse states").
enum class PrunedStates : int {
  kZeroTransition = 0,  // transition exp(dt*A) = 0, feed-through dt*u*sum_pruned(B*C) kept
  kRemove = 1,          // contributes nothing
};

// Largest state dimension (and kept-state count) the kernels support.
constexpr int kMaxStates = 256;

struct SelectiveScanParams {
  // ---- sizes
  int batch = 0;     // b
  int dim = 0;       // d
  int seqlen = 0;    // l
  int dstate = 0;    // n
  int n_groups_B = 1;  // g of B (1 for an ungrouped (b, n, l) B); must divide d
  int n_groups_C = 1;  // g of C
  ScalarType dtype = ScalarType::kFloat32;  // of u, delta, z, B, C and out

  // ---- sequence tensors: element strides, the l stride is 1
  const void* u = nullptr;
  int64_t u_batch_stride = 0, u_dim_stride = 0;
  const void* delta = nullptr;
  int64_t delta_batch_stride = 0, delta_dim_stride = 0;
  const void* z = nullptr;  // optional gate
  int64_t z_batch_stride = 0, z_dim_stride = 0;
  void* out = nullptr;
  int64_t out_batch_stride = 0, out_dim_stride = 0;
  const void* B = nullptr;
  int64_t B_batch_stride = 0, B_group_stride = 0, B_dstate_stride = 0, B_seqlen_stride = 1;
  const void* C = nullptr;
  int64_t C_batch_stride = 0, C_group_stride = 0, C_dstate_stride = 0, C_seqlen_stride = 1;

  // ---- per-channel parameters (float32)
  const float* A = nullptr;
  int64_t A_dim_stride = 0, A_dstate_stride = 0;
  const float* D = nullptr;           // optional
  const float* delta_bias = nullptr;  // optional
  bool delta_softplus = false;        // softplus(delta + delta_bias), PyTorch threshold 20

  // ---- sparsity
  StateMode mode = StateMode::kDense;
  PrunedStates pruned_states = PrunedStates::kZeroTransition;
  const int32_t* kept_idx = nullptr;
  int64_t kept_idx_row_stride = 0;  // channel mode: elements between rows (>= n_kept)
  const int32_t* kept_count = nullptr;
  int n_kept = 0;  // k (column) or k_max (channel); ignored (= n) when dense

  // ---- outputs and scratch
  float* last_state = nullptr;  // optional (b, d, n)
  int64_t last_state_batch_stride = 0, last_state_dim_stride = 0, last_state_dstate_stride = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;

  // ---- tuning: lanes that split one chunk of a channel along l (1, 2, 4, ..., 128; above 32 a
  // channel spans several warps of its block); 0 picks it from the problem size and the GPU
  // (docs/cuda.md, "Choice of P").
  int time_segments = 0;
};

// Scratch bytes selective_scan_fwd() needs for these params (0 when none).
size_t selective_scan_fwd_workspace_bytes(const SelectiveScanParams& params);

// nullptr when the params are consistent, else a static message naming the offending field.
const char* selective_scan_fwd_check(const SelectiveScanParams& params);

// The time_segments value selective_scan_fwd() will use for these params on the current device.
int selective_scan_fwd_time_segments(const SelectiveScanParams& params);

// Launches the scan on `stream` (asynchronous). Returns cudaErrorInvalidValue when
// selective_scan_fwd_check() fails, else the launch status (cudaGetLastError()).
cudaError_t selective_scan_fwd(const SelectiveScanParams& params, cudaStream_t stream);

}  // namespace sparsessm
