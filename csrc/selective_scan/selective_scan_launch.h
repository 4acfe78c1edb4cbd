// Internal: what the dispatcher (selective_scan.cu) decides before a launch, and the launch
// entry points that the per-dtype translation units instantiate (selective_scan_fwd_*.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "selective_scan.h"

namespace sparsessm {
namespace detail {

// Tuning knobs (compile-time; the defaults are what the H100 measurements in docs/cuda.md chose):
//   SPARSESSM_MIN_BLOCKS_PER_SM  __launch_bounds__ min blocks: 5 caps registers at 102 per thread
//   SPARSESSM_STATE_UNROLL       unroll factor of the kept-state loop
//   SPARSESSM_PREFETCH_BC        1: load the next state's B / C rows before the current state's math
#ifndef SPARSESSM_MIN_BLOCKS_PER_SM
#define SPARSESSM_MIN_BLOCKS_PER_SM 5
#endif
#ifndef SPARSESSM_STATE_UNROLL
#define SPARSESSM_STATE_UNROLL 2
#endif
#ifndef SPARSESSM_PREFETCH_BC
#define SPARSESSM_PREFETCH_BC 0
#endif

constexpr int kThreads = 128;  // threads per block (4 warps)
constexpr int kMinBlocksPerSM = SPARSESSM_MIN_BLOCKS_PER_SM;  // register cap: 65536 / (128 * this)
constexpr int kStateUnroll = SPARSESSM_STATE_UNROLL;
constexpr bool kPrefetchBC = SPARSESSM_PREFETCH_BC != 0;
constexpr int kItems = 8;           // consecutive timesteps per lane and chunk (one 16-byte vector of 16-bit data)
constexpr int kMaxSegments = 128;      // lanes per channel: up to a whole block (4 warps)
constexpr int kMaxAutoSegments = 32;   // what the launcher picks by itself (one warp; P > 32 is opt-in)
constexpr int kCarrySmemBytes = 32 * 1024;  // shared memory for the carried states of one block
constexpr int kFeedBlock = 256;     // threads per block of the feed-through pre-pass

// Everything a launch needs besides the params.
struct LaunchPlan {
  int k = 0;              // state slots per channel the recurrence runs (n dense, k column, k_max channel)
  int segments = 1;       // P: lanes per channel, each owning kItems consecutive timesteps of a chunk
  int segment_shift = 0;  // log2(P)
  float* feed = nullptr;  // (b, feed_groups, feed_pitch) pruned-state feed-through, or nullptr
  int64_t feed_pitch = 0;
  int feed_groups = 1;    // lcm(g_B, g_C)
  bool feed_excludes_kept = false;  // column masks: sum over pruned states; channel: over all states
};

template <typename T, int kK>
cudaError_t launch_fwd(const SelectiveScanParams& params, const LaunchPlan& plan, cudaStream_t stream);

// The kept-state counts with a compile-time kernel (kK); kK = 0 is the run-time kernel.
#define SPARSESSM_FOR_EACH_STATIC_K(X) X(4) X(8) X(12) X(16) X(24) X(32) X(64)

}  // namespace detail
}  // namespace sparsessm
