// Sparse selective scan, forward: the kernels.
//
// ------------------------------------------------------------------------------------------ design
// Semantics: docs/semantics.md. Per channel c and kept state s (dt = softplus(delta + bias)):
//     h_t = exp(dt_t A[c,s]) h_{t-1} + dt_t u_t B_t[s],   y_t = sum_s C_t[s] h_t (+ D u_t),
//     out_t = y_t * silu(z_t).
// Pruned states never enter the recurrence. Under zero_transition their contribution is the
// feed-through dt_t u_t sum_{pruned s} B_t[s] C_t[s]; under remove they contribute nothing.
// docs/cuda.md ("Design") explains the choices below and their expected ceilings.
//
// Mapping. A block of kThreads = 128 threads holds 128 / P channels of one batch row and one B/C
// group pair; the P lanes of a channel (P = 1, 2, ..., 128, a template parameter) split a chunk of
// T = P * kItems timesteps, lane `seg` owning kItems (16) consecutive steps. The block walks the
// sequence chunk by chunk; the state of every kept slot is carried from chunk to chunk in shared
// memory.
//
// B / C staging. B and C do not depend on the channel, so the block stages them once for all its
// channels: a chunk's rows (the kept states of a dense / column mask; all n states of a per-channel
// mask) are cut into stages of G rows (G * T <= kStageElems = 2048 elements), each fetched one
// stage ahead with cp.async into the thread's raw slice of shared memory (any strides: element by
// element when a row is not unit-stride and aligned, or in the last chunk), then converted to fp32
// into a double-buffered tile laid out [row][quad][lane][4] (B and C rows interleaved, rows padded
// by 4 floats) so that every lane reads its 16 steps with four 16-byte loads. One __syncthreads()
// per stage.
//
// State loop (per kept slot j; `#pragma unroll 1`, no run-time branch on P, the mode or excl):
//   P = 1:   h = fma(exp2(dt a2), h, du B); y = fma(C, h, y) for the lane's 16 steps;
//   P > 1:   pass 1 keeps dA_t = exp2(dt_t a2) and dbu_t = du_t B_t in registers and reduces the
//            lane's steps to the affine map h -> cum h + loc (cum = exp2(a2 sum dt): one exp for the
//            lane); the chunk's entering state is folded into lane 0's map; an unrolled
//            Kogge-Stone scan of warp shuffles (log2 min(P, 32) steps) gives every lane the state
//            at its end, one more shuffle the state entering it; P > 32: each warp publishes its
//            map in shared memory and folds the maps of the channel's earlier warps after one
//            __syncthreads() per slot; pass 2 reruns the 16 steps from the entering state and
//            accumulates C_t h_t.
//   Each slot has a record {a2 = A[c, s] log2(e), carried state} (per-channel masks: also its
//   staged row and its state) made once per block, so the loop reads only shared memory.
// Per-channel masks: slot j of channel c is state kept_idx[c, j], staged in stage
// kept_idx[c, j] / G; a stage's iteration count is the largest slot count of the channels that
// share a warp (P <= 32) or the block (P > 32); padded iterations use a no-op slot (A = 0, a zero
// row).
//
// Pruned-state feed-through (zero_transition): a small pre-pass kernel writes
// G[b, q, t] = sum_s B_t[s] C_t[s] per batch row, B/C group pair q and step into the workspace:
//   column masks: s over the pruned states, and y += dt u G;
//   per-channel masks: s over all states, and each kept state adds C_t dA_t h_{t-1} instead of
//   C_t h_t (one more operation per step and kept state, KernelMode::kChannelExcl).
//
// Everything here also compiles as plain host C++ with SPARSESSM_EMULATE defined (see
// csrc/emulation/cuda_emulation.h), which is how the logic is tested on machines without a GPU; all
// shared-memory and 16-byte global accesses go through the accessors below so that the emulation
// can check alignment and races.
#pragma once

#include <cfloat>
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
constexpr float kLn2 = 0.6931471805599453f;

// ------------------------------------------------------------------------------ platform helpers
// exp2 / log2 / reciprocal on the special-function unit (MUFU): one instruction each.
__device__ __forceinline__ float fast_exp2(float x) {
#if defined(SPARSESSM_EMULATE)
  return std::exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float fast_log2(float x) {
#if defined(SPARSESSM_EMULATE)
  return std::log2(x);
#else
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float fast_rcp(float x) {
#if defined(SPARSESSM_EMULATE)
  return 1.f / x;
#else
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
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

__device__ __forceinline__ uint32_t float_to_bits(float f) {
#if defined(SPARSESSM_EMULATE)
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(f));
  return bits;
#else
  return __float_as_uint(f);
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

// Shared memory: plain accesses on the GPU, checked ones (bounds, alignment, races) in the emulation.
template <typename T>
__device__ __forceinline__ T sld(const T* p) {
#if defined(SPARSESSM_EMULATE)
  return ::sparsessm_emu::smem_load(p);
#else
  return *p;
#endif
}

template <typename T>
__device__ __forceinline__ void sst(T* p, T v) {
#if defined(SPARSESSM_EMULATE)
  ::sparsessm_emu::smem_store(p, v);
#else
  *p = v;
#endif
}

__device__ __forceinline__ float4 sld4(const float* p) { return sld(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ void sst4(float* p, float4 v) { sst(reinterpret_cast<float4*>(p), v); }

// 16-byte global accesses (the caller guarantees 16-byte alignment; the emulation checks it).
__device__ __forceinline__ uint4 gld16(const void* p) {
#if defined(SPARSESSM_EMULATE)
  return ::sparsessm_emu::global_load16(p);
#else
  return *reinterpret_cast<const uint4*>(p);
#endif
}

__device__ __forceinline__ void gst16(void* p, uint4 v) {
#if defined(SPARSESSM_EMULATE)
  ::sparsessm_emu::global_store16(p, v);
#else
  *reinterpret_cast<uint4*>(p) = v;
#endif
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// 16 bytes global -> shared without going through registers (sm_80+), completed by cp_async_wait().
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
#if defined(SPARSESSM_EMULATE)
  ::sparsessm_emu::smem_store(static_cast<uint4*>(smem_dst), ::sparsessm_emu::global_load16(gmem_src));
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
#endif
}

// Waits for this thread's cp_async16() copies.
__device__ __forceinline__ void cp_async_wait() {
#if !defined(SPARSESSM_EMULATE)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving memory accesses across this point (no instruction emitted): the
// slow path of a stage fetch must be issued before the state loop, not sunk past it with its
// addresses held in registers throughout.
__device__ __forceinline__ void compiler_fence() {
#if !defined(SPARSESSM_EMULATE)
  asm volatile("" ::: "memory");
#endif
}

// One Kogge-Stone step of the scan of affine maps h -> cum h + loc over groups of kWidth lanes:
// lane s composes its map with the one of lane s - off when that lane exists. The shuffle's own
// "source lane exists" predicate guards the update (no compare, no moves). kCum: also update cum
// (the last step needs only loc).
template <int kWidth, bool kCum>
__device__ __forceinline__ void scan_step(float& cum, float& loc, int off) {
#if defined(SPARSESSM_EMULATE)
  const float lu = __shfl_up_sync(0xffffffffu, loc, off, kWidth);
  const float cu = __shfl_up_sync(0xffffffffu, cum, off, kWidth);
  if (static_cast<int>(::sparsessm_emu::lane() % kWidth) >= off) {
    loc = fmaf(cum, lu, loc);
    if (kCum) cum *= cu;
  }
#else
  const int c = (32 - kWidth) << 8;
  if (kCum) {
    asm("{\n\t.reg .pred p;\n\t.reg .f32 lu, cu;\n\t"
        "shfl.sync.up.b32 lu|p, %0, %2, %3, -1;\n\t"
        "shfl.sync.up.b32 cu, %1, %2, %3, -1;\n\t"
        "@p fma.rn.f32 %0, %1, lu, %0;\n\t"
        "@p mul.f32 %1, %1, cu;\n\t}"
        : "+f"(loc), "+f"(cum)
        : "r"(off), "r"(c));
  } else {
    asm("{\n\t.reg .pred p;\n\t.reg .f32 lu;\n\t"
        "shfl.sync.up.b32 lu|p, %0, %2, %3, -1;\n\t"
        "@p fma.rn.f32 %0, %1, lu, %0;\n\t}"
        : "+f"(loc)
        : "f"(cum), "r"(off), "r"(c));
  }
#endif
}

// The value of lane s - 1 of the group of kWidth lanes, or `first` in the group's lane 0.
template <int kWidth>
__device__ __forceinline__ float shfl_up1_or(float v, float first) {
#if defined(SPARSESSM_EMULATE)
  const float r = __shfl_up_sync(0xffffffffu, v, 1, kWidth);
  return ::sparsessm_emu::lane() % kWidth == 0 ? first : r;
#else
  float r;
  asm("{\n\t.reg .pred p;\n\t"
      "shfl.sync.up.b32 %0|p, %1, 1, %3, -1;\n\t"
      "@!p mov.f32 %0, %2;\n\t}"
      : "=f"(r)
      : "f"(v), "f"(first), "r"((32 - kWidth) << 8));
  return r;
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
  return ::sparsessm_emu::last_error().empty() ? cudaSuccess : cudaErrorLaunchFailure;
#else
  return cudaGetLastError();
#endif
}

// ------------------------------------------------------------------------------ element access
// Elem<T>: raw bits of one element, and 8 elements packed in 32-bit words (16 bytes for 16-bit
// types, 32 for fp32).
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static constexpr int kWords = 8;  // words per 8 elements
  __device__ __forceinline__ static uint32_t load_bits(const float* p) {
    return *reinterpret_cast<const uint32_t*>(p);
  }
  __device__ __forceinline__ static float lo(uint32_t w) { return bits_to_float(w); }
  __device__ __forceinline__ static void unpack(const uint32_t* w, float* v) {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = bits_to_float(w[i]);
  }
  __device__ __forceinline__ static void pack(const float* v, uint32_t* w) {
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = float_to_bits(v[i]);
  }
};

template <>
struct Elem<__nv_bfloat16> {
  static constexpr int kWords = 4;
  __device__ __forceinline__ static uint32_t load_bits(const __nv_bfloat16* p) {
    return *reinterpret_cast<const uint16_t*>(p);
  }
  __device__ __forceinline__ static float lo(uint32_t w) { return bits_to_float(w << 16); }
  __device__ __forceinline__ static float hi(uint32_t w) { return bits_to_float(w & 0xffff0000u); }
  __device__ __forceinline__ static void unpack(const uint32_t* w, float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = lo(w[i]);
      v[2 * i + 1] = hi(w[i]);
    }
  }
  __device__ __forceinline__ static uint32_t pack2(float a, float b) {
#if defined(SPARSESSM_EMULATE)
    const __nv_bfloat16_raw x = __float2bfloat16_rn(a), y = __float2bfloat16_rn(b);
    return static_cast<uint32_t>(x.x) | (static_cast<uint32_t>(y.x) << 16);
#else
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&v);
#endif
  }
  __device__ __forceinline__ static void pack(const float* v, uint32_t* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = pack2(v[2 * i], v[2 * i + 1]);
  }
};

template <>
struct Elem<__half> {
  static constexpr int kWords = 4;
  __device__ __forceinline__ static uint32_t load_bits(const __half* p) {
    return *reinterpret_cast<const uint16_t*>(p);
  }
  __device__ __forceinline__ static float lo(uint32_t w) {
    __half_raw r;
    r.x = static_cast<unsigned short>(w & 0xffffu);
    return __half2float(__half(r));
  }
  __device__ __forceinline__ static float hi(uint32_t w) { return lo(w >> 16); }
  __device__ __forceinline__ static void unpack(const uint32_t* w, float* v) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = lo(w[i]);
      v[2 * i + 1] = hi(w[i]);
    }
  }
  __device__ __forceinline__ static uint32_t pack2(float a, float b) {
#if defined(SPARSESSM_EMULATE)
    const __half_raw x = __float2half_rn(a), y = __float2half_rn(b);
    return static_cast<uint32_t>(x.x) | (static_cast<uint32_t>(y.x) << 16);
#else
    const __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&v);
#endif
  }
  __device__ __forceinline__ static void pack(const float* v, uint32_t* w) {
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = pack2(v[2 * i], v[2 * i + 1]);
  }
};

// The 16 bytes' worth of raw elements of `row` (element stride `stride`) from step t (8 16-bit or 4
// fp32 elements), zeros past l: the slow path (strided or misaligned rows, the sequence's tail).
template <typename T>
__device__ __forceinline__ uint4 load16_strided(const T* row, int64_t stride, int t, int l) {
  constexpr int kPer = 4 / sizeof(T);  // elements per word
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t word = 0;
#pragma unroll
    for (int e = 0; e < kPer; ++e) {
      const int s = t + kPer * i + e;
      if (s < l) word |= Elem<T>::load_bits(row + s * stride) << (16 * e);
    }
    w[i] = word;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Eight raw elements of `row` from step t, zeros past l: one or two 16-byte loads when the row is
// unit-stride and aligned and the 8 steps are in range.
template <typename T>
__device__ __forceinline__ void load8_bits(const T* row, int64_t stride, int t, int l, uint32_t (&w)[Elem<T>::kWords]) {
  constexpr int kVec = Elem<T>::kWords / 4;  // 16-byte vectors per 8 elements
  const T* p = row + t * stride;
  const bool fast = stride == 1 && t + 8 <= l && aligned16(p);
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
    const uint4 q = fast ? gld16(reinterpret_cast<const unsigned char*>(p) + 16 * v)
                         : load16_strided(row, stride, t + v * (16 / static_cast<int>(sizeof(T))), l);
    w[4 * v] = q.x;
    w[4 * v + 1] = q.y;
    w[4 * v + 2] = q.z;
    w[4 * v + 3] = q.w;
  }
}

// v[i] = row[t0 + i] as float (unit stride), zeros past l.
template <typename T>
__device__ __forceinline__ void load_steps(const T* row, int t0, int l, float (&v)[kItems]) {
#pragma unroll
  for (int h = 0; h < kItems / 8; ++h) {
    uint32_t w[Elem<T>::kWords];
    load8_bits(row, 1, t0 + 8 * h, l, w);
    Elem<T>::unpack(w, v + 8 * h);
  }
}

// Stores the 16 bytes' worth of elements of w (8 16-bit or 4 fp32) at row[t..] that are < l.
template <typename T>
__device__ __forceinline__ void store16_tail(T* row, int t, int l, uint4 q) {
  constexpr int kPer = 4 / sizeof(T);
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4 * kPer; ++i) {
    if (t + i < l) {
      const uint32_t bits = kPer == 1 ? w[i] : (w[i / 2] >> (16 * (i % 2))) & 0xffffu;
      if constexpr (sizeof(T) == 4) {
        *reinterpret_cast<uint32_t*>(row + t + i) = bits;
      } else {
        *reinterpret_cast<uint16_t*>(row + t + i) = static_cast<uint16_t>(bits);
      }
    }
  }
}

// row[t0 + i] = v[i] for t0 + i < l (unit stride).
template <typename T>
__device__ __forceinline__ void store_steps(T* row, int t0, int l, const float (&v)[kItems]) {
  constexpr int kVec = Elem<T>::kWords / 4;
#pragma unroll
  for (int h = 0; h < kItems / 8; ++h) {
    const int t = t0 + 8 * h;
    T* p = row + t;
    uint32_t w[Elem<T>::kWords];
    Elem<T>::pack(v + 8 * h, w);
    const bool fast = t + 8 <= l && aligned16(p);
#pragma unroll
    for (int q = 0; q < kVec; ++q) {
      const uint4 words = make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
      if (fast) {
        gst16(reinterpret_cast<unsigned char*>(p) + 16 * q, words);
      } else {
        store16_tail(row, t + q * (16 / static_cast<int>(sizeof(T))), l, words);
      }
    }
  }
}

// torch.nn.functional.softplus (beta 1, threshold 20) with two MUFU operations: log(1 + e^x) as
// lg2(1 + e^x) ln 2. Its absolute error is below 2e-7 (lg2.approx's absolute error near 1, plus
// rounding 1 + e^x), so dt is exact to a few ulp wherever it matters and off in relative terms only
// where dt itself is below ~1e-4 (x < -9): steps that move the state by dt u B ~ 1e-4 u B.
__device__ __forceinline__ float softplus(float x) {
  const float logged = fast_log2(1.f + fast_exp2(x * kLog2e)) * kLn2;
  return x > 20.f ? x : logged;
}

// z * sigmoid(z) with two MUFU operations (exp2, reciprocal); exact to a few ulp.
__device__ __forceinline__ float silu(float z) { return z * fast_rcp(1.f + fast_exp2(-z * kLog2e)); }

// ------------------------------------------------------------------------------ B / C staging
// A thread's share of a stage: kVec vectors of 8 steps of one row, for B and for C. Fetched raw
// (cp.async) into the thread's own slice of the raw buffer, converted to fp32 at commit.
template <typename T, int kP>
struct Staging {
  static constexpr Tile kTile = tile_of(kP);
  static constexpr int kVecsPerRow = kTile.steps / 8;
  static constexpr int kVec = (kTile.stage_rows * kVecsPerRow + kThreads - 1) / kThreads;
  static constexpr int kWords = Elem<T>::kWords;            // words per vector of 8 elements
  static constexpr int kThreadWords = 2 * kVec * kWords;    // B and C
};

// ------------------------------------------------------------------------------ one kept slot
// The state entering the chunk is h0 (carried); returns the state leaving it (meaningful in the
// channel's last lane). rb: this lane's column of the slot's staged B row; its C row follows at
// + row_stride. agg: the warp maps of this channel (P > 32).
template <int kP, bool kExcl>
__device__ __forceinline__ float run_slot(float a2, float h0, const float* rb, const float (&dt)[kItems],
                                          const float (&du)[kItems], float dsum, float (&y)[kItems], int seg,
                                          float* agg) {
  constexpr int kQ = kItems / 4;
  constexpr int kWidth = tile_of(kP).width;
  constexpr int kRS = tile_of(kP).row_stride;
  const float* rc = rb + kRS;
  if constexpr (kP == 1) {
    float h = h0;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const float4 b4 = sld4(rb + q * 4 * kP);
      const float4 c4 = sld4(rc + q * 4 * kP);
      const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
      const float cv[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = 4 * q + r;
        const float dA = fast_exp2(dt[i] * a2);
        if (kExcl) {
          const float prev = dA * h;
          h = fmaf(du[i], bv[r], prev);
          y[i] = fmaf(cv[r], prev, y[i]);
        } else {
          h = fmaf(dA, h, du[i] * bv[r]);
          y[i] = fmaf(cv[r], h, y[i]);
        }
      }
    }
    return h;
  } else {
    // pass 1: transitions, drives and the lane's local end state from a zero start
    float dA[kItems], dbu[kItems];
    float loc = 0.f;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const float4 b4 = sld4(rb + q * 4 * kP);
      const float bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = 4 * q + r;
        dA[i] = fast_exp2(dt[i] * a2);
        dbu[i] = du[i] * bv[r];
        loc = i == 0 ? dbu[0] : fmaf(dA[i], loc, dbu[i]);
      }
    }
    float cum = fast_exp2(a2 * dsum);
    if (seg == 0) loc = fmaf(cum, h0, loc);  // the channel's first lane starts from the carried state
    // Inclusive scan of the maps over the warp's lanes of the channel: afterwards loc is the state
    // at the end of this lane (relative to the state entering the warp's part of the chunk).
#pragma unroll
    for (int off = 1; off < kWidth; off <<= 1) {
      if (kP > 32 || 2 * off < kWidth) {
        scan_step<kWidth, true>(cum, loc, off);
      } else {
        scan_step<kWidth, false>(cum, loc, off);  // the last step needs no cum unless warps combine
      }
    }
    float h_warp = h0;  // state entering this warp's part of the chunk
    float h_end = loc;
    if constexpr (kP > 32) {
      const int w = seg / 32;
      if ((seg & 31) == 31) sst(reinterpret_cast<float2*>(agg + 2 * w), make_float2(cum, loc));
      __syncthreads();
      float hw = 0.f;  // warp 0's map already holds h0
#pragma unroll
      for (int v = 0; v + 1 < tile_of(kP).warps_per_channel; ++v) {
        if (v < w) {
          const float2 m = sld(reinterpret_cast<const float2*>(agg + 2 * v));
          hw = fmaf(m.x, hw, m.y);
        }
      }
      if (w > 0) {
        h_warp = hw;
        h_end = fmaf(cum, hw, loc);
      }
    }
    float h = shfl_up1_or<kWidth>(h_end, h_warp);
    // pass 2: the recurrence again from the true entering state
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const float4 c4 = sld4(rc + q * 4 * kP);
      const float cv[4] = {c4.x, c4.y, c4.z, c4.w};
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = 4 * q + r;
        if (kExcl) {
          const float prev = dA[i] * h;
          h = prev + dbu[i];
          y[i] = fmaf(cv[r], prev, y[i]);
        } else {
          h = fmaf(dA[i], h, dbu[i]);
          y[i] = fmaf(cv[r], h, y[i]);
        }
      }
    }
    return h;
  }
}

// ------------------------------------------------------------------------------ kernels
// Pre-pass: feed[b, q, t] = sum over states s (all, or all but the kept_idx list) of B_t[s] C_t[s]
// for the B/C groups of channel q * (d / groups).
template <typename T>
__global__ void __launch_bounds__(kFeedBlock)
    feedthrough_kernel(const SelectiveScanParams p, float* __restrict__ feed, int64_t pitch, int groups,
                       bool exclude_kept) {
  const int t = blockIdx.x * kFeedBlock + threadIdx.x;
  const int q = blockIdx.y;
  const int bi = blockIdx.z;
  if (t >= p.seqlen) return;
  const int c = q * (p.dim / groups);
  const int gB = c / (p.dim / p.n_groups_B);
  const int gC = c / (p.dim / p.n_groups_C);
  const T* __restrict__ Bp =
      static_cast<const T*>(p.B) + bi * p.B_batch_stride + gB * p.B_group_stride + t * p.B_seqlen_stride;
  const T* __restrict__ Cp =
      static_cast<const T*>(p.C) + bi * p.C_batch_stride + gC * p.C_group_stride + t * p.C_seqlen_stride;
  const int32_t* __restrict__ kept = p.kept_idx;
  const int n_excluded = exclude_kept ? p.n_kept : 0;
  float acc = 0.f;
  int j = 0;
  for (int s = 0; s < p.dstate; ++s) {
    if (j < n_excluded && kept[j] == s) {  // kept_idx is ascending
      ++j;
      continue;
    }
    acc = fmaf(Elem<T>::lo(Elem<T>::load_bits(Bp + s * p.B_dstate_stride)),
               Elem<T>::lo(Elem<T>::load_bits(Cp + s * p.C_dstate_stride)), acc);
  }
  feed[(static_cast<int64_t>(bi) * groups + q) * pitch + t] = acc;
}

template <typename T, int kP, KernelMode kMode>
__global__ void __launch_bounds__(kThreads, min_blocks_per_sm(kP))
    selective_scan_fwd_kernel(const SelectiveScanParams p, const LaunchPlan plan) {
  constexpr Tile kTile = tile_of(kP);
  constexpr int kT = kTile.steps;
  constexpr int kChannels = kTile.channels;
  constexpr int kG = kTile.stage_rows;
  constexpr int kRS = kTile.row_stride;
  constexpr int kWarpsPerChannel = kTile.warps_per_channel;
  constexpr bool kChannelMode = kMode != KernelMode::kUniform;
  constexpr bool kExcl = kMode == KernelMode::kChannelExcl;
  using Stage = Staging<T, kP>;

  const int tid = threadIdx.x;
  const int seg = tid % kP;
  const int chl = tid / kP;
  const int warp = tid / 32;
  const int group = blockIdx.x / plan.blocks_per_group;
  const int in_group = (blockIdx.x % plan.blocks_per_group) * kChannels + chl;
  const bool ch_ok = in_group < plan.group_channels;
  // Lanes past the group's last channel run every step with zero data (they take part in the
  // shuffles and barriers) and store nothing; c is a safe channel index for their table reads.
  const int c = group * plan.group_channels + (ch_ok ? in_group : plan.group_channels - 1);
  const int bi = blockIdx.y;
  const int K = plan.slots;
  const int R = plan.rows;
  const int l = p.seqlen;
  const SmemLayout L = smem_layout(kP, kMode, K, R, static_cast<int>(sizeof(T)));

  float* smem = dynamic_smem<float>();
  // record of slot j of this channel: {a2 = A log2(e), carried state[, staged row, state]}
  float* slots = smem + L.slots + chl * L.slot_stride * L.record;
  int* rowmap = reinterpret_cast<int*>(smem + L.rowmap);
  int* start = reinterpret_cast<int*>(smem + L.start) + chl * (L.stages + 1);
  int* trip = reinterpret_cast<int*>(smem + L.trip);
  float* agg = smem + L.agg + chl * kWarpsPerChannel * 2;  // + parity * kChannels * kWarpsPerChannel * 2

  // ---- per block, once: the kept slots' a2 and staged rows, zero carried states
  const bool column = p.mode == StateMode::kColumn;
  const int32_t* kept_row = kChannelMode ? p.kept_idx + static_cast<int64_t>(c) * p.kept_idx_row_stride : nullptr;
  int count = K;
  if constexpr (kChannelMode) {
    const int kc = ch_ok ? p.kept_count[c] : 0;
    count = kc < 0 ? 0 : (kc > K ? K : kc);
  }
  if constexpr (!kChannelMode) {
    for (int r = tid; r < R; r += kThreads) sst(rowmap + r, column ? p.kept_idx[r] : r);
  }
  for (int j = seg; j <= K; j += kP) {
    float a2 = 0.f;
    int row = L.rows - 1;  // the zero row (channel modes)
    const bool real = ch_ok && j < count;
    if (real) {
      const int s = kChannelMode ? kept_row[j] : (column ? p.kept_idx[j] : j);
      a2 = p.A[c * p.A_dim_stride + s * p.A_dstate_stride] * kLog2e;
      a2 = a2 < -FLT_MAX ? -FLT_MAX : a2;  // A = -inf: dA = 0 for dt > 0, and 1 (not NaN) for dt = 0
      row = s % kG;
    }
    float* rec = slots + j * L.record;
    if constexpr (kChannelMode) {
      sst4(rec, make_float4(a2, 0.f, bits_to_float(static_cast<uint32_t>(row)),
                            bits_to_float(static_cast<uint32_t>(real ? kept_row[j] : 0))));
    } else {
      sst(reinterpret_cast<float2*>(rec), make_float2(a2, 0.f));
    }
  }
  if constexpr (kChannelMode) {
    // start[g]: slots of this channel in stages before g (kept_idx rows are ascending)
    for (int g = seg; g <= L.stages; g += kP) {
      int before = 0;
      for (int j = 0; j < count; ++j) before += kept_row[j] < g * kG ? 1 : 0;
      sst(start + g, before);
    }
    // the zero row of both stage buffers, B and C
    for (int i = tid; i < 2 * 2 * kRS; i += kThreads) {
      const int buf = i / (2 * kRS);
      sst(smem + L.tiles + buf * L.buffer + (L.rows - 1) * 2 * kRS + i % (2 * kRS), 0.f);
    }
  }
  __syncthreads();
  if constexpr (kChannelMode) {
    // trip[w][g]: iterations of stage g, the largest slot count among the channels that run their
    // slots in lockstep (those of warp w for P <= 32, the whole block for P > 32)
    const int per_warp = kP <= 32 ? 32 / kP : kChannels;
    for (int e = tid; e < (kThreads / 32) * L.stages; e += kThreads) {
      const int w = e / L.stages, g = e % L.stages;
      const int first = kP <= 32 ? w * per_warp : 0;
      int most = 0;
      for (int ch = first; ch < first + per_warp; ++ch) {
        const int* st = reinterpret_cast<int*>(smem + L.start) + ch * (L.stages + 1);
        const int n_here = sld(st + g + 1) - sld(st + g);
        most = n_here > most ? n_here : most;
      }
      sst(trip + e, most);
    }
  }

  // ---- B / C of the block's group, staged stage by stage
  const int gc = group * plan.group_channels;
  const T* __restrict__ B_base =
      static_cast<const T*>(p.B) + bi * p.B_batch_stride + (gc / (p.dim / p.n_groups_B)) * p.B_group_stride;
  const T* __restrict__ C_base =
      static_cast<const T*>(p.C) + bi * p.C_batch_stride + (gc / (p.dim / p.n_groups_C)) * p.C_group_stride;
  auto rows_in = [&](int g) { return R - g * kG < kG ? R - g * kG : kG; };
  // this thread's raw vectors: B vectors then C vectors, 16 bytes each, interleaved over threads
  uint4* raw = reinterpret_cast<uint4*>(smem + L.raw) + tid;
  constexpr int kRawPerVec = Stage::kWords / 4;  // 16-byte pieces per vector of 8 elements
  // Every B / C row unit-stride along l and 16-byte aligned at 8-step boundaries: then a chunk that
  // ends before l is fetched with cp.async alone (the common case, decided once per block).
  constexpr int kElem = static_cast<int>(sizeof(T));
  const bool bc_vector = p.B_seqlen_stride == 1 && p.C_seqlen_stride == 1 && aligned16(B_base) &&
                         aligned16(C_base) && (p.B_dstate_stride * kElem) % 16 == 0 &&
                         (p.C_dstate_stride * kElem) % 16 == 0;
  // issue the loads of stage g of chunk `chunk`
  auto fetch = [&](int chunk, int g) {
    const int rows = rows_in(g);
    const bool vector = bc_vector && (chunk + 1) * kT <= l;
#pragma unroll
    for (int v = 0; v < Stage::kVec; ++v) {
      const int vi = tid + v * kThreads;
      const int row = vi / Stage::kVecsPerRow;
      if (row < rows) {
        const int r = g * kG + row;
        const int s = kChannelMode ? r : sld(rowmap + r);
        const int t = chunk * kT + (vi % Stage::kVecsPerRow) * 8;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const T* src = m == 0 ? B_base + s * p.B_dstate_stride : C_base + s * p.C_dstate_stride;
          uint4* dst = raw + ((m * Stage::kVec + v) * kRawPerVec) * kThreads;
          if (vector) {
#pragma unroll
            for (int q = 0; q < kRawPerVec; ++q) {
              cp_async16(dst + q * kThreads, reinterpret_cast<const unsigned char*>(src + t) + 16 * q);
            }
          } else {
            // Strided or misaligned rows, or the sequence's last chunk: element by element, in a
            // rolled loop so that the compiler does not keep hoisted addresses alive across the kernel.
            const int64_t stride = m == 0 ? p.B_seqlen_stride : p.C_seqlen_stride;
            const T* e_src = src + t * stride;
#pragma unroll 1
            for (int e = 0; e < 8; ++e, e_src += stride) {
              const uint32_t bits = t + e < l ? Elem<T>::load_bits(e_src) : 0u;
              unsigned char* unit = reinterpret_cast<unsigned char*>(dst + (e * kElem / 16) * kThreads);
              const int at = (e * kElem) % 16;
              if constexpr (sizeof(T) == 4) {
                sst(reinterpret_cast<uint32_t*>(unit + at), bits);
              } else {
                sst(reinterpret_cast<uint16_t*>(unit + at), static_cast<uint16_t>(bits));
              }
            }
          }
        }
      }
    }
    compiler_fence();
  };
  // raw vectors -> fp32 rows [B row | C row], each [quad][lane][4], of the stage buffer at `tiles`
  auto commit = [&](float* tiles, int g) {
    cp_async_wait();
    const int rows = rows_in(g);
#pragma unroll
    for (int v = 0; v < Stage::kVec; ++v) {
      const int vi = tid + v * kThreads;
      const int row = vi / Stage::kVecsPerRow;
      if (row < rows) {
        const int tl = (vi % Stage::kVecsPerRow) * 8;  // step inside the chunk
        float* db = tiles + row * 2 * kRS + ((tl % kItems) / 4 * kP + tl / kItems) * 4;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          uint32_t w[Stage::kWords];
#pragma unroll
          for (int q = 0; q < kRawPerVec; ++q) {
            const uint4 x = sld(raw + ((m * Stage::kVec + v) * kRawPerVec + q) * kThreads);
            w[4 * q] = x.x;
            w[4 * q + 1] = x.y;
            w[4 * q + 2] = x.z;
            w[4 * q + 3] = x.w;
          }
          float f[8];
          Elem<T>::unpack(w, f);
          sst4(db + m * kRS, make_float4(f[0], f[1], f[2], f[3]));
          sst4(db + m * kRS + 4 * kP, make_float4(f[4], f[5], f[6], f[7]));
        }
      }
    }
  };

  const int n_chunks = (l + kT - 1) / kT;
  if (L.stages > 0) fetch(0, 0);
  int buf = 0;     // stage buffer parity
  int parity = 0;  // warp-map buffer parity (P > 32)
  for (int chunk = 0; chunk < n_chunks; ++chunk) {
    const int t0 = chunk * kT + seg * kItems;
    float dt[kItems], du[kItems], y[kItems];
    float dsum = 0.f;  // the lane's sum of dt: its map's transition is exp2(a2 * dsum)
    {
      const T* u_row = static_cast<const T*>(p.u) + bi * p.u_batch_stride + c * p.u_dim_stride;
      const T* delta_row = static_cast<const T*>(p.delta) + bi * p.delta_batch_stride + c * p.delta_dim_stride;
      const float bias = p.delta_bias != nullptr ? p.delta_bias[c] : 0.f;
      const float Dval = p.D != nullptr ? p.D[c] : 0.f;
      float uv[kItems], dv[kItems];  // out-of-range steps become identities: dt = 0 (dA = 1, no drive)
      if (ch_ok) {
        load_steps(u_row, t0, l, uv);
        load_steps(delta_row, t0, l, dv);
      } else {
#pragma unroll
        for (int i = 0; i < kItems; ++i) uv[i] = dv[i] = 0.f;
      }
      if (p.delta_softplus) {
#pragma unroll
        for (int i = 0; i < kItems; ++i) dv[i] = softplus(dv[i] + bias);
      } else {
#pragma unroll
        for (int i = 0; i < kItems; ++i) dv[i] += bias;
      }
      if (ch_ok && t0 + kItems <= l) {
#pragma unroll
        for (int i = 0; i < kItems; ++i) dt[i] = dv[i];
      } else {
#pragma unroll
        for (int i = 0; i < kItems; ++i) dt[i] = (ch_ok && t0 + i < l) ? dv[i] : 0.f;  // identity steps
      }
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        du[i] = dt[i] * uv[i];
        dsum += dt[i];
        y[i] = Dval * uv[i];
      }
      if (plan.feed != nullptr && ch_ok && t0 < l) {
        float g[kItems];
        load_steps(plan.feed + (static_cast<int64_t>(bi) * plan.groups + group) * plan.feed_pitch, t0, l, g);
#pragma unroll
        for (int i = 0; i < kItems; ++i) y[i] = fmaf(du[i], g[i], y[i]);
      }
    }

    for (int g = 0; g < L.stages; ++g) {
      float* tiles = smem + L.tiles + buf * L.buffer;
      commit(tiles, g);
      const bool last_stage = g + 1 == L.stages;  // next: stage g + 1, or stage 0 of the next chunk
      if (!last_stage || chunk + 1 < n_chunks) fetch(last_stage ? chunk + 1 : chunk, last_stage ? 0 : g + 1);
      __syncthreads();
      const float* col = tiles + seg * 4;  // this lane's column of the stage's rows
      if constexpr (!kChannelMode) {
        const int n_here = rows_in(g);
        float* rec = slots + g * kG * 2;
#pragma unroll 1
        for (int i = 0; i < n_here; ++i, rec += 2, col += 2 * kRS) {
          const float2 r = sld(reinterpret_cast<const float2*>(rec));
          const float h = run_slot<kP, kExcl>(r.x, r.y, col, dt, du, dsum, y, seg,
                                              agg + parity * kChannels * kWarpsPerChannel * 2);
          if (kP > 32) parity ^= 1;
          if (kP > 1 && kP <= 32) __syncwarp();  // the channel's lanes have read the carried state
          if (seg == kP - 1) sst(rec + 1, h);
        }
      } else {
        const int first = sld(start + g), n_mine = sld(start + g + 1) - first;
        // iterations of this stage for the channels of this warp; the shuffle from lane 0 tells the
        // compiler that the count is the same in the whole warp (no divergence handling around the
        // shuffles of the state loop)
        const int n_here = __shfl_sync(kFullMask, sld(trip + warp * L.stages + g), 0);
#pragma unroll 1
        for (int i = 0; i < n_here; ++i) {
          float* rec = slots + (i < n_mine ? first + i : K) * 4;  // slot K: the no-op slot
          const float4 r = sld4(rec);
          const float h = run_slot<kP, kExcl>(r.x, r.y, col + static_cast<int>(float_to_bits(r.z)) * 2 * kRS, dt, du,
                                              dsum, y, seg, agg + parity * kChannels * kWarpsPerChannel * 2);
          if (kP > 32) parity ^= 1;
          if (kP > 1 && kP <= 32) __syncwarp();
          if (seg == kP - 1 && i < n_mine) sst(rec + 1, h);
        }
      }
      buf ^= 1;
    }

    if (ch_ok && t0 < l) {
      if (p.z != nullptr) {
        const T* z_row = static_cast<const T*>(p.z) + bi * p.z_batch_stride + c * p.z_dim_stride;
        float zv[kItems];
        load_steps(z_row, t0, l, zv);
#pragma unroll
        for (int i = 0; i < kItems; ++i) y[i] *= silu(zv[i]);
      }
      store_steps(static_cast<T*>(p.out) + bi * p.out_batch_stride + c * p.out_dim_stride, t0, l, y);
    }
  }

  if (p.last_state != nullptr) {
    float* __restrict__ ls = p.last_state + bi * p.last_state_batch_stride + c * p.last_state_dim_stride;
    __syncthreads();  // the channel's last lane wrote the final states
    if (ch_ok && p.mode != StateMode::kDense) {  // pruned entries are 0
      for (int s = seg; s < p.dstate; s += kP) ls[s * p.last_state_dstate_stride] = 0.f;
    }
    __syncthreads();  // zeros first, then the kept states (possibly written by another lane)
    if (ch_ok) {
      const int n_slots = kChannelMode ? sld(reinterpret_cast<int*>(smem + L.start) + chl * (L.stages + 1) + L.stages)
                                       : K;
      for (int j = seg; j < n_slots; j += kP) {
        const float* rec = slots + j * L.record;
        const int s = kChannelMode ? static_cast<int>(float_to_bits(sld(rec + 3))) : sld(rowmap + j);
        ls[s * p.last_state_dstate_stride] = sld(rec + 1);
      }
    }
  }
}

// ------------------------------------------------------------------------------ host launch
template <typename T, int kP, KernelMode kMode>
cudaError_t launch_scan(const SelectiveScanParams& p, const LaunchPlan& plan, cudaStream_t stream) {
  if (plan.feed != nullptr) {
    const dim3 grid((p.seqlen + kFeedBlock - 1) / kFeedBlock, plan.groups, p.batch);
    launch_kernel(feedthrough_kernel<T>, grid, dim3(kFeedBlock), 0, stream, p, plan.feed, plan.feed_pitch, plan.groups,
                  plan.feed_excludes_kept);
    const cudaError_t err = last_launch_error();
    if (err != cudaSuccess) return err;
  }
  auto kernel = selective_scan_fwd_kernel<T, kP, kMode>;
#if !defined(SPARSESSM_EMULATE)
  if (plan.smem_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem_bytes));
    if (err != cudaSuccess) return err;
  }
#endif
  const dim3 grid(plan.groups * plan.blocks_per_group, p.batch);
  launch_kernel(kernel, grid, dim3(kThreads), plan.smem_bytes, stream, p, plan);
  return last_launch_error();
}

}  // namespace detail
}  // namespace sparsessm
