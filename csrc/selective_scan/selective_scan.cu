// Dispatcher of the sparse selective scan: validates params, plans the launch (kernel mode, lanes
// per channel P, grid, shared memory, feed-through workspace) and calls the per-dtype instantiations.
#include <atomic>
#include <cstdint>

#if !defined(SPARSESSM_EMULATE)
#include <cuda_runtime.h>
#endif

#include "selective_scan.h"
#include "selective_scan_launch.h"

namespace sparsessm {
namespace detail {
namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

int gcd(int a, int b) {
  while (b != 0) {
    const int t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// Slots the recurrence runs per channel.
int slot_count(const SelectiveScanParams& p) { return p.mode == StateMode::kDense ? p.dstate : p.n_kept; }

bool needs_feedthrough(const SelectiveScanParams& p) {
  if (p.pruned_states != PrunedStates::kZeroTransition) return false;
  if (p.mode == StateMode::kColumn) return p.n_kept < p.dstate;
  return p.mode == StateMode::kChannel;
}

int feed_groups(const SelectiveScanParams& p) {
  return p.n_groups_B / gcd(p.n_groups_B, p.n_groups_C) * p.n_groups_C;
}

int64_t feed_pitch(const SelectiveScanParams& p) { return round_up(p.seqlen, kItems); }

int multiprocessor_count() {
#if defined(SPARSESSM_EMULATE)
  return 2;
#else
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) return 132;
  if (device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();  // a failed query leaves a (non-sticky) error behind: clear it
    return 132;
  }
  if (device < kMaxDevices) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
#endif
}

bool is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

KernelMode kernel_mode(const SelectiveScanParams& p) {
  if (p.mode != StateMode::kChannel) return KernelMode::kUniform;
  return p.pruned_states == PrunedStates::kZeroTransition ? KernelMode::kChannelExcl : KernelMode::kChannel;
}

}  // namespace

LaunchPlan make_plan(const SelectiveScanParams& p) {
  LaunchPlan plan;
  plan.mode = kernel_mode(p);
  plan.slots = slot_count(p);
  plan.rows = plan.mode == KernelMode::kUniform ? plan.slots : p.dstate;
  plan.groups = feed_groups(p);
  plan.group_channels = p.dim / plan.groups;
  const int elem_bytes = p.dtype == ScalarType::kFloat32 ? 4 : 2;
  plan.lanes = choose_lanes(static_cast<int64_t>(p.batch) * p.dim, p.seqlen, plan.group_channels,
                            multiprocessor_count(), p.time_segments, plan.mode, plan.slots, plan.rows, elem_bytes);
  const int per_block = tile_of(plan.lanes).channels;
  plan.blocks_per_group = (plan.group_channels + per_block - 1) / per_block;
  plan.smem_bytes =
      static_cast<size_t>(smem_layout(plan.lanes, plan.mode, plan.slots, plan.rows, elem_bytes).words) * 4;
  return plan;
}

template <typename T>
cudaError_t dispatch(const SelectiveScanParams& p, const LaunchPlan& plan, cudaStream_t stream) {
#define SPARSESSM_CASE(T_, P_, MODE_) \
  if (plan.lanes == P_ && plan.mode == MODE_) return launch_scan<T_, P_, MODE_>(p, plan, stream);
  SPARSESSM_FOR_EACH_KERNEL(SPARSESSM_CASE, T)
#undef SPARSESSM_CASE
  return cudaErrorInvalidValue;
}

}  // namespace detail

size_t selective_scan_fwd_workspace_bytes(const SelectiveScanParams& p) {
  if (!detail::needs_feedthrough(p)) return 0;
  return static_cast<size_t>(p.batch) * detail::feed_groups(p) * detail::feed_pitch(p) * sizeof(float);
}

const char* selective_scan_fwd_check(const SelectiveScanParams& p) {
  if (p.batch < 1) return "batch: expected >= 1";
  if (p.batch > 65535) return "batch: at most 65535 batch rows per launch";
  if (p.dim < 1) return "dim: expected >= 1";
  if (p.seqlen < 1) return "seqlen: expected >= 1";
  if (p.dstate < 1 || p.dstate > kMaxStates) return "dstate: expected 1 <= n <= 256";
  if (p.n_groups_B < 1 || p.dim % p.n_groups_B != 0) return "n_groups_B: expected a divisor of dim";
  if (p.n_groups_C < 1 || p.dim % p.n_groups_C != 0) return "n_groups_C: expected a divisor of dim";
  if (p.dtype != ScalarType::kFloat32 && p.dtype != ScalarType::kFloat16 && p.dtype != ScalarType::kBFloat16) {
    return "dtype: expected float32, float16 or bfloat16";
  }
  if (p.u == nullptr) return "u: null pointer";
  if (p.delta == nullptr) return "delta: null pointer";
  if (p.out == nullptr) return "out: null pointer";
  if (p.B == nullptr) return "B: null pointer";
  if (p.C == nullptr) return "C: null pointer";
  if (p.A == nullptr) return "A: null pointer";
  if (p.pruned_states != PrunedStates::kZeroTransition && p.pruned_states != PrunedStates::kRemove) {
    return "pruned_states: expected kZeroTransition or kRemove";
  }
  switch (p.mode) {
    case StateMode::kDense:
      break;
    case StateMode::kColumn:
      if (p.kept_idx == nullptr && p.n_kept > 0) return "kept_idx: null pointer for a column mask";
      if (p.n_kept < 0 || p.n_kept > p.dstate) return "n_kept: expected 0 <= k <= dstate for a column mask";
      break;
    case StateMode::kChannel:
      if (p.kept_count == nullptr) return "kept_count: null pointer for a per-channel mask";
      if (p.kept_idx == nullptr && p.n_kept > 0) return "kept_idx: null pointer for a per-channel mask";
      if (p.n_kept < 0 || p.n_kept > p.dstate) return "n_kept: expected 0 <= k_max <= dstate";
      if (p.n_kept > 0 && p.kept_idx_row_stride < p.n_kept) {
        return "kept_idx_row_stride: expected >= n_kept for a per-channel mask";
      }
      break;
    default:
      return "mode: expected kDense, kColumn or kChannel";
  }
  if (p.time_segments < 0 || (p.time_segments > 0 && (!detail::is_pow2(p.time_segments) ||
                                                       p.time_segments > detail::kMaxLanes))) {
    return "time_segments: expected 0 (auto) or a power of two <= 128";
  }
  const size_t need = selective_scan_fwd_workspace_bytes(p);
  if (need > 0) {
    if (detail::feed_groups(p) > 65535) return "n_groups_B, n_groups_C: lcm(g_B, g_C) must be <= 65535";
    if (p.workspace == nullptr) return "workspace: null pointer (see selective_scan_fwd_workspace_bytes)";
    if (p.workspace_bytes < need) return "workspace_bytes: smaller than selective_scan_fwd_workspace_bytes()";
    if ((reinterpret_cast<uintptr_t>(p.workspace) & 15u) != 0) return "workspace: expected 16-byte alignment";
  }
  return nullptr;
}

int selective_scan_fwd_time_segments(const SelectiveScanParams& p) { return detail::make_plan(p).lanes; }

cudaError_t selective_scan_fwd(const SelectiveScanParams& p, cudaStream_t stream) {
  if (selective_scan_fwd_check(p) != nullptr) return cudaErrorInvalidValue;
  detail::LaunchPlan plan = detail::make_plan(p);
  if (detail::needs_feedthrough(p)) {
    plan.feed = static_cast<float*>(p.workspace);
    plan.feed_pitch = detail::feed_pitch(p);
    plan.feed_excludes_kept = p.mode == StateMode::kColumn;
  }
  switch (p.dtype) {
    case ScalarType::kFloat32:
      return detail::dispatch<float>(p, plan, stream);
    case ScalarType::kFloat16:
      return detail::dispatch<__half>(p, plan, stream);
    case ScalarType::kBFloat16:
      return detail::dispatch<__nv_bfloat16>(p, plan, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sparsessm
