// Sparse selective scan, forward: the kernels.
//
// ------------------------------------------------------------------------------------------ design
// Semantics: docs/semantics.md. Per channel c and kept state s (dt = softplus(delta + bias)):
//     h_t = exp(dt_t A[c,s]) h_{t-1} + dt_t u_t B_t[s],   y_t = sum_s C_t[s] h_t (+ D u_t),
//     out_t = y_t * silu(z_t).
// Pruned states never enter the recurrence. Under zero_transition their contribution is the
// feed-through dt_t u_t sum_{pruned s} B_t[s] C_t[s]; under remove they contribute nothing.
//
// Work decomposition. A block has kThreads = 128 threads and handles 128 / P channels of one batch
// row ("several channels per block"). The P lanes of a channel (P = 1, 2, ..., 128) split a chunk of
// L = P * kItems timesteps: lane `seg` owns kItems = 8 consecutive timesteps. The sequence is walked
// chunk by chunk; the state of every kept slot is carried from one chunk to the next in shared
// memory. Up to P = 32 a channel lives inside one warp and no block-wide barrier is needed; P = 64
// or 128 (opt-in through time_segments) spreads a channel over 2 or 4 warps, which scan their lanes
// with shuffles and combine their aggregate maps through shared memory after a block barrier per
// kept slot (more warps in flight per channel for small b * d, at the cost of those barriers).
//
// Per chunk a lane:
//   1. loads u, delta (and later z) for its 8 timesteps with one 16-byte vector load per tensor for
//      16-bit types (two for fp32) when the address is aligned and the 8 steps are in range, else
//      with bounds-checked scalar loads; computes dt (bias, softplus with PyTorch's threshold 20),
//      du = dt u, and starts y = D u (+ du * G, the pre-computed pruned feed-through, see below);
//   2. for every kept slot j (s = kept_idx[j]; the slot count k is a template parameter for
//      4, 8, 12, 16, 24, 32 and 64 kept states, a run-time value otherwise), vector-loads B[s] and
//      C[s] for its 8 timesteps and runs the recurrence in fp32 with exp2 of a pre-scaled A:
//        P = 1: plain sequential recurrence from the carried state;
//        P > 1: pass 1 computes (and keeps in registers) dA_t = exp2(dt_t a2) and the drives
//               dt_t u_t B_t, and the segment's affine map h -> cum h + loc (loc: end state from a
//               zero start; cum = prod dA = exp2(a2 sum dt), one exp per segment); the maps of the
//               P lanes are combined by a Kogge-Stone scan of warp shuffles (log2 P steps; for
//               P > 32 per warp, then over the warps' maps in shared memory), which
//               gives each lane the true state h_in entering its segment; pass 2 reruns the
//               recurrence from h_in with the kept dA and drives and accumulates C_t h_t. One exp
//               per (state, timestep), six FP32 operations;
//   3. multiplies by silu(z), rounds to the output type and stores (vectorized when aligned).
// Padded slots of per-channel masks (j >= kept_count[c]) load nothing and use A = 0, B = C = 0, so
// they are exact no-ops without divergent control flow around the shuffles.
//
// Time-invariant B / C (is_variable_B / _C = false): a float32 (d, n) matrix; a lane reads its
// channel's value of state s once per chunk and uses it for all its steps (no per-step loads).
//
// Pruned-state feed-through (zero_transition only). A small pre-pass kernel writes
// G[b, q, t] = sum_s B_t[s] C_t[s] per batch row, B/C group pair q (channel q when B or C is
// time-invariant) and timestep into the workspace:
//   column masks:      s over the pruned states, and y += du * G: no work per pruned state at all;
//   per-channel masks: s over all states, and each kept state contributes C_t (h_t - dt u B_t[s])
//                      = C_t dA_t h_{t-1} instead of C_t h_t, which is the same total.
// So pruned states cost nothing in the recurrence, and a 50% mask halves its work.
//
// The choice of P. A block walks the whole sequence, so the grid should be a single wave: P is the
// largest power of two whose grid, ceil(b d P / 128) blocks, fits the resident block slots
// (SMs x kMinBlocksPerSM = 5, the register budget of __launch_bounds__), capped by what covers l
// in one chunk and at least k / 64 so that the carried states of a block, (128 / P) k floats, fit
// in 32 KB of shared memory, and at most 32. Large b d gives P = 1 (no scan at all), b = 1
// prefill P = 16 or 32. SelectiveScanParams::time_segments overrides it, up to 128 (the
// micro-benchmark sweeps it). First H100 measurements (docs/cuda.md#tuning): with this heuristic
// the kernel is latency bound at small b d (18% achieved occupancy), which P = 64 / 128 targets.
//
// Everything here also compiles as plain host C++ with SPARSESSM_EMULATE defined (see
// csrc/emulation/cuda_emulation.h), which is how the logic is tested on machines without a GPU.
#pragma once

#include <cstdint>

#if defined(SPARSESSM_EMULATE)
#include "../emulation/cuda_emulation.h"
#else
#include <cuda_runtime.h>
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "selective_scan.h"
#include "selective_scan_launch.h"

namespace sparsessm {
namespace detail {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

// ------------------------------------------------------------------------------ platform helpers
__device__ __forceinline__ float fast_exp2(float x) {
#if defined(SPARSESSM_EMULATE)
  return std::exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float bits_to_float(uint32_t bits) {
#if defined(SPARSESSM_EMULATE)
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#else
  return __uint_as_float(bits);
#endif
}

template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
#if defined(SPARSESSM_EMULATE)
  return reinterpret_cast<T*>(::sparsessm_emu::tls().block->smem.data());
#else
  extern __shared__ __align__(16) unsigned char sparsessm_smem[];
  return reinterpret_cast<T*>(sparsessm_smem);
#endif
}

template <typename Kernel, typename... Args>
inline void launch_kernel(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args... args) {
#if defined(SPARSESSM_EMULATE)
  (void)stream;
  ::sparsessm_emu::launch(grid, block, smem, [=] { kernel(args...); });
#else
  kernel<<<grid, block, smem, stream>>>(args...);
#endif
}

inline cudaError_t last_launch_error() {
#if defined(SPARSESSM_EMULATE)
  return cudaSuccess;
#else
  return cudaGetLastError();
#endif
}

// ------------------------------------------------------------------------------ element access
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
struct Convert;

template <>
struct Convert<float> {
  __device__ __forceinline__ static float from(float x) { return x; }
};

template <>
struct Convert<__half> {
  __device__ __forceinline__ static void unpack(uint32_t w, float& lo, float& hi) {
    __half_raw a, b;
    a.x = static_cast<unsigned short>(w & 0xffffu);
    b.x = static_cast<unsigned short>(w >> 16);
    lo = __half2float(__half(a));
    hi = __half2float(__half(b));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __half_raw a = __float2half_rn(lo);
    const __half_raw b = __float2half_rn(hi);
    return static_cast<uint32_t>(a.x) | (static_cast<uint32_t>(b.x) << 16);
  }
  __device__ __forceinline__ static __half from(float x) { return __float2half_rn(x); }
};

template <>
struct Convert<__nv_bfloat16> {
  __device__ __forceinline__ static void unpack(uint32_t w, float& lo, float& hi) {
    lo = bits_to_float(w << 16);
    hi = bits_to_float(w & 0xffff0000u);
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat16_raw a = __float2bfloat16_rn(lo);
    const __nv_bfloat16_raw b = __float2bfloat16_rn(hi);
    return static_cast<uint32_t>(a.x) | (static_cast<uint32_t>(b.x) << 16);
  }
  __device__ __forceinline__ static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

template <typename T>
__device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// v[i] = row[t0 + i] for t0 + i < l, else 0. One or two 16-byte loads when possible.
template <typename T>
__device__ __forceinline__ void load_items(const T* __restrict__ row, int t0, int l, float (&v)[kItems]) {
  const T* p = row + t0;
  if (t0 + kItems <= l && aligned16(p)) {
    if constexpr (sizeof(T) == 4) {
      const float4* q = reinterpret_cast<const float4*>(p);
#pragma unroll
      for (int i = 0; i < kItems / 4; ++i) {
        const float4 f = q[i];
        v[4 * i + 0] = f.x;
        v[4 * i + 1] = f.y;
        v[4 * i + 2] = f.z;
        v[4 * i + 3] = f.w;
      }
    } else {
      static_assert(sizeof(T) == 2 && kItems == 8, "one 16-byte vector holds 8 16-bit items");
      const uint4 w = *reinterpret_cast<const uint4*>(p);
      Convert<T>::unpack(w.x, v[0], v[1]);
      Convert<T>::unpack(w.y, v[2], v[3]);
      Convert<T>::unpack(w.z, v[4], v[5]);
      Convert<T>::unpack(w.w, v[6], v[7]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) v[i] = (t0 + i < l) ? to_float(p[i]) : 0.f;
  }
}

// row[t0 + i] = v[i] for t0 + i < l.
template <typename T>
__device__ __forceinline__ void store_items(T* __restrict__ row, int t0, int l, const float (&v)[kItems]) {
  T* p = row + t0;
  if (t0 + kItems <= l && aligned16(p)) {
    if constexpr (sizeof(T) == 4) {
      float4* q = reinterpret_cast<float4*>(p);
#pragma unroll
      for (int i = 0; i < kItems / 4; ++i) q[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
    } else {
      uint4 w;
      w.x = Convert<T>::pack(v[0], v[1]);
      w.y = Convert<T>::pack(v[2], v[3]);
      w.z = Convert<T>::pack(v[4], v[5]);
      w.w = Convert<T>::pack(v[6], v[7]);
      *reinterpret_cast<uint4*>(p) = w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (t0 + i < l) p[i] = Convert<T>::from(v[i]);
    }
  }
}

// B or C of state s for the lane's steps: offset s * dstate_stride into the channel's sequence row
// (seq, vector loads as above) or into its time-invariant float32 row (fixed, one value for all).
template <typename T>
__device__ __forceinline__ void load_bc(const T* __restrict__ seq, const float* __restrict__ fixed, int64_t offset,
                                        int t0, int l, float (&v)[kItems]) {
  if (fixed != nullptr) {
    const float x = fixed[offset];
#pragma unroll
    for (int i = 0; i < kItems; ++i) v[i] = x;
  } else {
    load_items(seq + offset, t0, l, v);
  }
}

__device__ __forceinline__ float softplus(float x) {
  // torch.nn.functional.softplus, beta 1, threshold 20.
  return x > 20.f ? x : log1pf(expf(x));
}

__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

// ------------------------------------------------------------------------------ recurrence pieces
// Sequential recurrence over the lane's timesteps from state h (P = 1). kExcl: per-channel
// zero_transition, where a kept state adds C_t dA_t h_{t-1} (see the design note).
template <bool kExcl>
__device__ __forceinline__ float recur_sequential(float h, float a2, const float (&dt)[kItems],
                                                  const float (&du)[kItems], const float (&bv)[kItems],
                                                  const float (&cv)[kItems], float (&y)[kItems]) {
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const float dA = fast_exp2(dt[i] * a2);
    const float dbu = du[i] * bv[i];
    if (kExcl) {
      const float prev = dA * h;
      h = prev + dbu;
      y[i] = fmaf(cv[i], prev, y[i]);
    } else {
      h = fmaf(dA, h, dbu);
      y[i] = fmaf(cv[i], h, y[i]);
    }
  }
  return h;
}

// Segment pass 1 (P > 1): the transitions dA and drives dt u B of the lane's timesteps (kept in
// registers for pass 2) and the local end state from a zero start: the segment's map is
// h -> cum * h + loc with cum = prod dA = exp2(a2 * sum dt), one exp for the whole segment.
__device__ __forceinline__ float segment_local(float a2, const float (&dt)[kItems], const float (&du)[kItems],
                                               const float (&bv)[kItems], float (&dA)[kItems],
                                               float (&dbu)[kItems]) {
  float loc = 0.f;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    dA[i] = fast_exp2(dt[i] * a2);
    dbu[i] = du[i] * bv[i];
    loc = fmaf(dA[i], loc, dbu[i]);
  }
  return loc;
}

// Segment pass 2: the recurrence again from the true entering state h, with the stored dA / drive.
template <bool kExcl>
__device__ __forceinline__ void segment_outputs(float h, const float (&dA)[kItems], const float (&dbu)[kItems],
                                                const float (&cv)[kItems], float (&y)[kItems]) {
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if (kExcl) {
      const float prev = dA[i] * h;
      h = prev + dbu[i];
      y[i] = fmaf(cv[i], prev, y[i]);
    } else {
      h = fmaf(dA[i], h, dbu[i]);
      y[i] = fmaf(cv[i], h, y[i]);
    }
  }
}

// ------------------------------------------------------------------------------ kernels
// Pre-pass: feed[b, q, t] = sum over states s (all, or all but the kept_idx list) of B_t[s] C_t[s]
// for the B/C groups of channel q * (d / feed_groups) (its own rows when B or C is time-invariant).
template <typename T>
__global__ void __launch_bounds__(kFeedBlock)
    feedthrough_kernel(const SelectiveScanParams p, float* __restrict__ feed, int64_t pitch, int feed_groups,
                       bool exclude_kept) {
  const int t = blockIdx.x * kFeedBlock + threadIdx.x;
  const int q = blockIdx.y;
  const int bi = blockIdx.z;
  if (t >= p.seqlen) return;
  const int c = q * (p.dim / feed_groups);
  const int gB = c / (p.dim / p.n_groups_B);
  const int gC = c / (p.dim / p.n_groups_C);
  const T* __restrict__ Bp = static_cast<const T*>(p.B) + bi * p.B_batch_stride + gB * p.B_group_stride + t;
  const T* __restrict__ Cp = static_cast<const T*>(p.C) + bi * p.C_batch_stride + gC * p.C_group_stride + t;
  const float* __restrict__ Bf = p.is_variable_B ? nullptr : static_cast<const float*>(p.B) + c * p.B_dim_stride;
  const float* __restrict__ Cf = p.is_variable_C ? nullptr : static_cast<const float*>(p.C) + c * p.C_dim_stride;
  const int32_t* __restrict__ kept = p.kept_idx;
  const int n_excluded = exclude_kept ? p.n_kept : 0;
  float acc = 0.f;
  int j = 0;
  for (int s = 0; s < p.dstate; ++s) {
    if (j < n_excluded && kept[j] == s) {  // kept_idx is ascending
      ++j;
      continue;
    }
    const float bv = Bf != nullptr ? Bf[s * p.B_dstate_stride] : to_float(Bp[s * p.B_dstate_stride]);
    const float cv = Cf != nullptr ? Cf[s * p.C_dstate_stride] : to_float(Cp[s * p.C_dstate_stride]);
    acc = fmaf(bv, cv, acc);
  }
  feed[(static_cast<int64_t>(bi) * feed_groups + q) * pitch + t] = acc;
}

template <typename T, int kK>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    selective_scan_fwd_kernel(const SelectiveScanParams p, const float* __restrict__ feed, int64_t feed_pitch,
                              int feed_groups, int k_runtime, int P, int seg_shift) {
  const int k = kK > 0 ? kK : k_runtime;  // warp-uniform trip count of the state loop
  const int tid = threadIdx.x;
  const int seg = tid & (P - 1);
  const int ch_local = tid >> seg_shift;
  const int c = blockIdx.x * (kThreads >> seg_shift) + ch_local;
  const int bi = blockIdx.y;
  const bool ch_ok = c < p.dim;
  // Lanes past the last channel run every step with zero data (they take part in the shuffles)
  // and store nothing; cc is a safe channel index for their table reads.
  const int cc = ch_ok ? c : p.dim - 1;
  float* carry = dynamic_smem<float>() + ch_local * k;
  // P > 32: the channel spans P / 32 warps. Each warp scans its lanes with shuffles, publishes
  // its aggregate map (cum, loc) per kept slot here, and after a block barrier folds the maps of
  // the channel's earlier warps into its entering state.
  const int lane = tid & 31;
  const int warp_in_ch = seg >> 5;
  const int width = P < 32 ? P : 32;  // shuffle width: the lanes of the channel inside one warp
  float* warp_maps = dynamic_smem<float>() + (kThreads >> seg_shift) * k +
                     static_cast<int64_t>(ch_local) * (P >> 5) * k * 2;

  const int32_t* __restrict__ kidx = nullptr;
  int count = k;
  if (p.mode == StateMode::kColumn) {
    kidx = p.kept_idx;
  } else if (p.mode == StateMode::kChannel) {
    kidx = p.kept_idx + cc * p.kept_idx_row_stride;
    count = p.kept_count[cc];
    count = count < 0 ? 0 : (count > k ? k : count);
  }
  if (!ch_ok) count = 0;
  const bool excl = p.mode == StateMode::kChannel && p.pruned_states == PrunedStates::kZeroTransition;

  const T* __restrict__ u_row = static_cast<const T*>(p.u) + bi * p.u_batch_stride + cc * p.u_dim_stride;
  const T* __restrict__ delta_row =
      static_cast<const T*>(p.delta) + bi * p.delta_batch_stride + cc * p.delta_dim_stride;
  const T* __restrict__ z_row =
      p.z == nullptr ? nullptr : static_cast<const T*>(p.z) + bi * p.z_batch_stride + cc * p.z_dim_stride;
  T* __restrict__ out_row = static_cast<T*>(p.out) + bi * p.out_batch_stride + cc * p.out_dim_stride;
  const T* __restrict__ B_base = static_cast<const T*>(p.B) + bi * p.B_batch_stride +
                                 (cc / (p.dim / p.n_groups_B)) * p.B_group_stride;
  const T* __restrict__ C_base = static_cast<const T*>(p.C) + bi * p.C_batch_stride +
                                 (cc / (p.dim / p.n_groups_C)) * p.C_group_stride;
  const float* __restrict__ feed_row =
      feed == nullptr ? nullptr
                      : feed + (static_cast<int64_t>(bi) * feed_groups + cc / (p.dim / feed_groups)) * feed_pitch;
  const float* __restrict__ A_row = p.A + cc * p.A_dim_stride;
  const float bias = p.delta_bias != nullptr ? p.delta_bias[cc] : 0.f;
  const float Dval = p.D != nullptr ? p.D[cc] : 0.f;

  const int l = p.seqlen;
  const int chunk_len = P * kItems;
  const int n_chunks = (l + chunk_len - 1) / chunk_len;

  for (int chunk = 0; chunk < n_chunks; ++chunk) {
    const int t0 = chunk * chunk_len + seg * kItems;
    float dt[kItems], du[kItems], y[kItems];
    float dt_sum = 0.f;  // sum of this lane's dt: its segment's transition is exp2(a2 * dt_sum)
    {
      float uv[kItems], dv[kItems];
      if (ch_ok) {
        load_items(u_row, t0, l, uv);
        load_items(delta_row, t0, l, dv);
      } else {
#pragma unroll
        for (int i = 0; i < kItems; ++i) uv[i] = dv[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        float x = dv[i] + bias;
        if (p.delta_softplus) x = softplus(x);
        // Out-of-range steps are identities: dt = 0 gives dA = 1 and no drive.
        dt[i] = (ch_ok && t0 + i < l) ? x : 0.f;
        du[i] = dt[i] * uv[i];
        dt_sum += dt[i];
        y[i] = Dval * uv[i];
      }
      if (feed_row != nullptr) {
        float g[kItems];
        load_items(feed_row, t0, l, g);
#pragma unroll
        for (int i = 0; i < kItems; ++i) y[i] = fmaf(du[i], g[i], y[i]);
      }
    }

    // Kept slot j: its transition exponent a2 = A log2(e) and its B / C values for the lane's
    // steps. Padded slots (j >= count) are exact no-ops: a2 = 0 and B = C = 0.
    auto load_slot = [&](int j, float& a2, float (&bv)[kItems], float (&cv)[kItems]) {
      if (j < count) {
        const int s = kidx != nullptr ? kidx[j] : j;
        a2 = A_row[s * p.A_dstate_stride] * kLog2e;
        // A time-invariant B / C row is addressed from the params here rather than kept in a
        // register across the loop (the register budget is tight; see kMinBlocksPerSM).
        load_bc(B_base, p.is_variable_B ? nullptr : static_cast<const float*>(p.B) + cc * p.B_dim_stride,
                s * p.B_dstate_stride, t0, l, bv);
        load_bc(C_base, p.is_variable_C ? nullptr : static_cast<const float*>(p.C) + cc * p.C_dim_stride,
                s * p.C_dstate_stride, t0, l, cv);
      } else {
        a2 = 0.f;
#pragma unroll
        for (int i = 0; i < kItems; ++i) bv[i] = cv[i] = 0.f;
      }
    };
    float a2_next = 0.f, bv_next[kItems], cv_next[kItems];
    if (kPrefetchBC) load_slot(0, a2_next, bv_next, cv_next);

#pragma unroll kStateUnroll
    for (int j = 0; j < k; ++j) {
      float bv[kItems], cv[kItems];
      float a2;
      if (kPrefetchBC) {
        a2 = a2_next;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          bv[i] = bv_next[i];
          cv[i] = cv_next[i];
        }
        if (j + 1 < k) load_slot(j + 1, a2_next, bv_next, cv_next);  // in flight during slot j's math
      } else {
        load_slot(j, a2, bv, cv);
      }
      const float h0 = chunk == 0 ? 0.f : carry[j];
      if (P == 1) {
        carry[j] = excl ? recur_sequential<true>(h0, a2, dt, du, bv, cv, y)
                        : recur_sequential<false>(h0, a2, dt, du, bv, cv, y);
      } else {
        float dA[kItems], dbu[kItems];
        float loc = segment_local(a2, dt, du, bv, dA, dbu);
        float cum = fast_exp2(a2 * dt_sum);
        // Inclusive scan of the segment maps over the P lanes of the channel (earlier segments
        // applied first): afterwards (cum, loc) maps the chunk's entering state to this lane's end.
        for (int off = 1; off < width; off <<= 1) {
          const float cum_up = __shfl_up_sync(kFullMask, cum, off, width);
          const float loc_up = __shfl_up_sync(kFullMask, loc, off, width);
          if ((seg & (width - 1)) >= off) {
            loc = fmaf(cum, loc_up, loc);
            cum *= cum_up;
          }
        }
        float h_warp = h0;  // the state entering this warp's part of the chunk
        if (P > 32) {
          if (lane == 31) {
            warp_maps[(warp_in_ch * k + j) * 2] = cum;
            warp_maps[(warp_in_ch * k + j) * 2 + 1] = loc;
          }
          __syncthreads();
          for (int w = 0; w < warp_in_ch; ++w) {
            h_warp = fmaf(warp_maps[(w * k + j) * 2], h_warp, warp_maps[(w * k + j) * 2 + 1]);
          }
        }
        const float h_end = fmaf(cum, h_warp, loc);
        float h_in = __shfl_up_sync(kFullMask, h_end, 1, width);
        if ((seg & (width - 1)) == 0) h_in = h_warp;
        if (excl) {
          segment_outputs<true>(h_in, dA, dbu, cv, y);
        } else {
          segment_outputs<false>(h_in, dA, dbu, cv, y);
        }
        if (seg == P - 1) carry[j] = h_end;
      }
    }
    // The carried states (and, for P > 32, the warp maps) written above are read by the
    // channel's other lanes in the next chunk.
    if (P > 32) {
      __syncthreads();
    } else {
      __syncwarp();
    }

    if (ch_ok && t0 < l) {
      if (z_row != nullptr) {
        float zv[kItems];
        load_items(z_row, t0, l, zv);
#pragma unroll
        for (int i = 0; i < kItems; ++i) y[i] *= silu(zv[i]);
      }
      store_items(out_row, t0, l, y);
    }
  }

  if (p.last_state != nullptr) {
    float* __restrict__ ls = p.last_state + bi * p.last_state_batch_stride + cc * p.last_state_dim_stride;
    if (ch_ok && p.mode != StateMode::kDense) {  // pruned entries are 0
      for (int s = seg; s < p.dstate; s += P) ls[s * p.last_state_dstate_stride] = 0.f;
    }
    // zeros first, then the kept states (possibly written by another lane or warp)
    if (P > 32) {
      __syncthreads();
    } else {
      __syncwarp();
    }
    if (ch_ok) {
      for (int j = seg; j < count; j += P) {
        const int s = kidx != nullptr ? kidx[j] : j;
        ls[s * p.last_state_dstate_stride] = carry[j];
      }
    }
  }
}

// ------------------------------------------------------------------------------ host launch
template <typename T, int kK>
cudaError_t launch_fwd(const SelectiveScanParams& p, const LaunchPlan& plan, cudaStream_t stream) {
  if (plan.feed != nullptr) {
    const dim3 grid((p.seqlen + kFeedBlock - 1) / kFeedBlock, plan.feed_groups, p.batch);
    launch_kernel(feedthrough_kernel<T>, grid, dim3(kFeedBlock), 0, stream, p, plan.feed, plan.feed_pitch,
                  plan.feed_groups, plan.feed_excludes_kept);
    const cudaError_t err = last_launch_error();
    if (err != cudaSuccess) return err;
  }
  const int channels_per_block = kThreads >> plan.segment_shift;
  const dim3 grid((p.dim + channels_per_block - 1) / channels_per_block, p.batch);
  // carried states, plus the per-warp maps when a channel spans several warps (P > 32)
  const size_t warp_maps = plan.segments > 32 ? static_cast<size_t>(kThreads / 32) * plan.k * 2 : 0;
  const size_t smem = (static_cast<size_t>(channels_per_block) * plan.k + warp_maps) * sizeof(float);
  launch_kernel(selective_scan_fwd_kernel<T, kK>, grid, dim3(kThreads), smem, stream, p,
                static_cast<const float*>(plan.feed), plan.feed_pitch, plan.feed_groups, plan.k, plan.segments,
                plan.segment_shift);
  return last_launch_error();
}

}  // namespace detail
}  // namespace sparsessm
