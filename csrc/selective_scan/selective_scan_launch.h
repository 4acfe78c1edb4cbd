// Internal: the launch geometry shared by the dispatcher (selective_scan.cu), the kernels
// (selective_scan_kernel.cuh) and the per-dtype instantiations (selective_scan_fwd_*.cu).
// Everything that both the host and the device compute (the tile shape of an instantiation, the
// shared-memory layout of a block) is defined once here.
#pragma once

#include <cstdint>

#if !defined(SPARSESSM_EMULATE)
#include <cuda_runtime.h>
#else
#include <cuda_runtime_api.h>
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "selective_scan.h"

namespace sparsessm {
namespace detail {

// Timesteps per lane and chunk. 16 amortises the per-state cost of the cross-lane scan over twice
// as many steps as 8, at ~32 more registers (docs/cuda.md, "Design"); must be a multiple of 8.
#ifndef SPARSESSM_SCAN_ITEMS
#define SPARSESSM_SCAN_ITEMS 16
#endif
// B/C elements (per tensor) staged in shared memory per pipeline stage (G rows x T steps): two
// 16-byte vectors per thread for 16-bit types. Larger stages spread the fixed cost of a stage
// (barrier, bookkeeping) over more kept states; the tiles take 2 x 2 x 4 x this many bytes.
#ifndef SPARSESSM_STAGE_ELEMS
#define SPARSESSM_STAGE_ELEMS 2048
#endif
// __launch_bounds__ minimum blocks per SM: 4 caps registers at 128 per thread (16 warps per SM).
// Channels spread over several warps (P > 32) need a few more (a block barrier and the warp maps
// per slot): 3 blocks, 168 registers.
#ifndef SPARSESSM_MIN_BLOCKS_PER_SM
#define SPARSESSM_MIN_BLOCKS_PER_SM 4
#endif
#ifndef SPARSESSM_MIN_BLOCKS_PER_SM_MULTIWARP
#define SPARSESSM_MIN_BLOCKS_PER_SM_MULTIWARP 3
#endif

constexpr int kThreads = 128;  // threads per block (4 warps)
constexpr int kItems = SPARSESSM_SCAN_ITEMS;
constexpr int kStageElems = SPARSESSM_STAGE_ELEMS;
__host__ __device__ constexpr int min_blocks_per_sm(int P) {
  return P > 32 ? SPARSESSM_MIN_BLOCKS_PER_SM_MULTIWARP : SPARSESSM_MIN_BLOCKS_PER_SM;
}
constexpr int kMaxLanes = 128;      // lanes per channel: 1, 2, 4, ..., 128 (above 32: several warps)
constexpr int kMaxAutoLanes = 64;   // the most the launcher picks by itself (128: explicit or B/C groups)
constexpr int kFeedBlock = 256;     // threads per block of the feed-through pre-pass
static_assert(kItems % 8 == 0 && kItems >= 8 && kItems <= 32, "SPARSESSM_SCAN_ITEMS: 8, 16, 24 or 32");

// Which kernel: the state loop differs between them, everything else is shared.
enum class KernelMode : int {
  kUniform = 0,       // dense and column masks: every channel runs the same k staged rows
  kChannel = 1,       // per-channel masks, pruned states removed (or no feed-through needed)
  kChannelExcl = 2,   // per-channel masks under zero_transition: kept states add C dA h_{t-1}
};

// The shape of the instantiation with P lanes per channel.
struct Tile {
  int lanes;            // P
  int steps;            // T = P * kItems: timesteps per chunk
  int channels;         // channels per block: kThreads / P
  int width;            // lanes of a channel inside one warp: min(P, 32)
  int warps_per_channel;
  int row_stride;       // floats per staged B (or C) row: T + 4 (the pad spreads gathered rows over banks)
  int stage_rows;       // G: B/C rows per pipeline stage
};

__host__ __device__ constexpr Tile tile_of(int P) {
  return Tile{P,
              P * kItems,
              kThreads / P,
              P < 32 ? P : 32,
              P > 32 ? P / 32 : 1,
              P * kItems + 4,
              kStageElems >= P * kItems ? kStageElems / (P * kItems) : 1};
}

// Shared memory of one block, in 4-byte words. R = rows staged per chunk (k for dense / column
// masks, n for per-channel ones), K = kept-state slots per channel (k or k_max).
struct SmemLayout {
  int rows;        // rows per stage buffer: min(G, R), plus a zero row (channel modes)
  int stages;      // stages per chunk: ceil(R / G)
  int record;      // words per slot record: {a2, carry} (dense / column), {a2, carry, row, state} (channel)
  int slot_stride; // records per channel: K + 1 (slot K: the no-op slot of channel modes), made odd
  int buffer;      // words of one stage buffer: rows x [B row | C row], 2 * row_stride each
  int tiles;       // offsets:
  int slots;       //   slots[channel][slot]     record of each kept slot
  int rowmap;      //   rowmap[r]                state of staged row r (dense / column)
  int start;       //   start[channel][stage+1]  first slot of each stage (channel modes)
  int trip;        //   trip[warp][stage]        iterations of each stage (channel modes)
  int agg;         //   agg[2][channel][warp]    (cum, loc) warp maps of multi-warp channels (P > 32)
  int raw;         //   raw[vector][thread][4]  each thread's next B / C vectors as loaded (dtype bits)
  int raw_vectors; //   16-byte vectors per thread
  int words;       // total
};

__host__ __device__ inline SmemLayout smem_layout(int P, KernelMode mode, int K, int R, int elem_bytes) {
  const Tile t = tile_of(P);
  const bool channel = mode != KernelMode::kUniform;
  SmemLayout s{};
  const int g = t.stage_rows;
  s.stages = R > 0 ? (R + g - 1) / g : 0;
  s.rows = (R < g ? R : g) + (channel ? 1 : 0);
  s.record = channel ? 4 : 2;
  s.slot_stride = (K + 1) | 1;  // odd: the channels of a warp read a slot from distinct banks
  s.buffer = 2 * s.rows * t.row_stride;
  int at = 0;
  s.tiles = at;
  at += 2 * s.buffer;
  s.slots = at;
  at += t.channels * s.slot_stride * s.record;
  s.rowmap = at;
  at += channel ? 0 : R;
  s.start = at;
  at += channel ? t.channels * (s.stages + 1) : 0;
  s.trip = at;
  at += channel ? (kThreads / 32) * s.stages : 0;
  at = (at + 3) / 4 * 4;
  s.agg = at;
  at += P > 32 ? 2 * t.channels * t.warps_per_channel * 2 : 0;
  at = (at + 3) / 4 * 4;
  s.raw = at;
  const int vectors_per_stage = (t.stage_rows * t.steps / 8 + kThreads - 1) / kThreads;  // per tensor
  s.raw_vectors = R > 0 ? 2 * vectors_per_stage * elem_bytes / 2 : 0;  // 8 elements = elem_bytes / 2 vectors
  at += s.raw_vectors * kThreads * 4;
  s.words = at;
  return s;
}

// Shared memory a block may take: fits every GPU of compute capability 8.0+ (sm_86 / sm_89 allow
// 99 KB per block); only n > 128 states at small P would need more, and take more lanes instead.
constexpr int kSmemLimit = 96 * 1024;

// Lanes per channel P for b * d channels of sequence length l on a GPU with `sms` multiprocessors,
// when blocks must not straddle B/C groups of group_channels channels; `requested` > 0 (the
// time_segments parameter) replaces the first two rules:
//   1. enough threads: the smallest power of two P with b * d * P >= one full wave of resident
//      threads at the register cap (sms x 128 x min_blocks_per_sm(P)), no more lanes than cover l
//      in one chunk, at most kMaxAutoLanes;
//   2. a block holds no more channels than a group has (no idle lanes when d or d / g < 128);
//   3. the block's shared memory fits kSmemLimit (its slot records grow with 128 / P channels x K).
inline int choose_lanes(int64_t channels, int seqlen, int group_channels, int sms, int requested, KernelMode mode,
                        int K, int R, int elem_bytes) {
  int P = 1;
  if (requested > 0) {
    P = requested;
  } else {
    while (P < kMaxAutoLanes && static_cast<int64_t>(P) * kItems < seqlen &&
           channels * P < static_cast<int64_t>(sms) * kThreads * min_blocks_per_sm(P)) {
      P *= 2;
    }
    while (P < kMaxLanes && kThreads / P > group_channels) P *= 2;
  }
  while (P < kMaxLanes && smem_layout(P, mode, K, R, elem_bytes).words * 4 > kSmemLimit) P *= 2;
  return P;
}

// Everything a launch needs besides the params.
struct LaunchPlan {
  KernelMode mode = KernelMode::kUniform;
  int lanes = 1;          // P
  int slots = 0;          // K: kept-state slots per channel (n dense, k column, k_max per channel)
  int rows = 0;           // R: staged B/C rows per chunk (K, or n for per-channel masks)
  int groups = 1;         // lcm(g_B, g_C): blocks never straddle a B/C group
  int group_channels = 0; // d / groups
  int blocks_per_group = 0;
  size_t smem_bytes = 0;
  float* feed = nullptr;  // (b, groups, feed_pitch) pruned-state feed-through, or nullptr
  int64_t feed_pitch = 0;
  bool feed_excludes_kept = false;  // column masks: sum over pruned states; channel: over all states
};

template <typename T, int kP, KernelMode kMode>
cudaError_t launch_scan(const SelectiveScanParams& params, const LaunchPlan& plan, cudaStream_t stream);

// Every compiled (P, mode) pair for one dtype T (the instantiation files and the dispatcher).
#define SPARSESSM_FOR_EACH_LANES(X, T, MODE) X(T, 1, MODE) X(T, 2, MODE) X(T, 4, MODE) X(T, 8, MODE) \
  X(T, 16, MODE) X(T, 32, MODE) X(T, 64, MODE) X(T, 128, MODE)
#define SPARSESSM_FOR_EACH_KERNEL(X, T)                    \
  SPARSESSM_FOR_EACH_LANES(X, T, KernelMode::kUniform)    \
  SPARSESSM_FOR_EACH_LANES(X, T, KernelMode::kChannel)    \
  SPARSESSM_FOR_EACH_LANES(X, T, KernelMode::kChannelExcl)

}  // namespace detail
}  // namespace sparsessm
