// Shared by the standalone test and the micro-benchmark: random problems, device buffers and a
// simple host implementation of the semantics (docs/semantics.md) in double precision.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#if !defined(SPARSESSM_EMULATE)
#include <cuda_runtime.h>
#endif

#include "selective_scan/selective_scan.h"

namespace scan_test {

using sparsessm::PrunedStates;
using sparsessm::ScalarType;
using sparsessm::SelectiveScanParams;
using sparsessm::StateMode;

#if defined(SPARSESSM_EMULATE)
#define SCAN_TEST_CUDA(call) (void)0
#else
#define SCAN_TEST_CUDA(call)                                                                       \
  do {                                                                                             \
    const cudaError_t err_ = (call);                                                               \
    if (err_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)
#endif

// Device memory (host memory in the emulation build); `offset` bytes past a 256-byte aligned start
// (a misaligned view when offset is not a multiple of 16).
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes, size_t offset = 0) : bytes_(bytes), offset_(offset) {
    if (bytes == 0) return;
#if defined(SPARSESSM_EMULATE)
    ptr_ = std::aligned_alloc(256, (bytes + offset + 255) / 256 * 256);
#else
    SCAN_TEST_CUDA(cudaMalloc(&ptr_, bytes + offset));
#endif
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_), offset_(o.offset_) { o.ptr_ = nullptr; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    std::swap(offset_, o.offset_);
    return *this;
  }
  ~Buffer() {
    if (ptr_ == nullptr) return;
#if defined(SPARSESSM_EMULATE)
    std::free(ptr_);
#else
    cudaFree(ptr_);
#endif
  }
  void upload(const void* src, size_t bytes) {
#if defined(SPARSESSM_EMULATE)
    std::memcpy(get(), src, bytes);
#else
    SCAN_TEST_CUDA(cudaMemcpy(get(), src, bytes, cudaMemcpyHostToDevice));
#endif
  }
  void download(void* dst, size_t bytes) const {
#if defined(SPARSESSM_EMULATE)
    std::memcpy(dst, get(), bytes);
#else
    SCAN_TEST_CUDA(cudaMemcpy(dst, get(), bytes, cudaMemcpyDeviceToHost));
#endif
  }
  void* get() const { return ptr_ == nullptr ? nullptr : static_cast<unsigned char*>(ptr_) + offset_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  size_t offset_ = 0;
};

inline size_t dtype_size(ScalarType t) { return t == ScalarType::kFloat32 ? 4 : 2; }
inline const char* dtype_name(ScalarType t) {
  return t == ScalarType::kFloat32 ? "fp32" : (t == ScalarType::kFloat16 ? "fp16" : "bf16");
}
inline const char* mode_name(StateMode m) {
  return m == StateMode::kDense ? "dense" : (m == StateMode::kColumn ? "column" : "channel");
}

// Round a float to the dtype and back (the values the kernel actually sees).
inline float quantize(float x, ScalarType t) {
  if (t == ScalarType::kFloat16) return __half2float(__float2half_rn(x));
  if (t == ScalarType::kBFloat16) return __bfloat162float(__float2bfloat16_rn(x));
  return x;
}

// Float values -> raw bytes in the dtype.
inline std::vector<uint8_t> encode(const std::vector<float>& v, ScalarType t) {
  std::vector<uint8_t> raw(v.size() * dtype_size(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == ScalarType::kFloat32) {
      std::memcpy(&raw[4 * i], &v[i], 4);
    } else if (t == ScalarType::kFloat16) {
      const __half_raw h = __float2half_rn(v[i]);
      std::memcpy(&raw[2 * i], &h.x, 2);
    } else {
      const __nv_bfloat16_raw h = __float2bfloat16_rn(v[i]);
      std::memcpy(&raw[2 * i], &h.x, 2);
    }
  }
  return raw;
}

inline std::vector<float> decode(const std::vector<uint8_t>& raw, ScalarType t) {
  const size_t n = raw.size() / dtype_size(t);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == ScalarType::kFloat32) {
      std::memcpy(&v[i], &raw[4 * i], 4);
    } else if (t == ScalarType::kFloat16) {
      __half_raw h;
      std::memcpy(&h.x, &raw[2 * i], 2);
      v[i] = __half2float(__half(h));
    } else {
      __nv_bfloat16_raw h;
      std::memcpy(&h.x, &raw[2 * i], 2);
      v[i] = __bfloat162float(__nv_bfloat16(h));
    }
  }
  return v;
}

// kUnstructured: per-channel counts between 0 and k (k in every third channel);
// kBernoulli: each state kept with probability k / n (a random unstructured mask);
// kNM: k of every 4 consecutive states.
enum class MaskKind { kDense, kColumn, kUnstructured, kBernoulli, kNM };

inline const char* mask_name(MaskKind m) {
  switch (m) {
    case MaskKind::kDense:
      return "dense";
    case MaskKind::kColumn:
      return "column";
    case MaskKind::kUnstructured:
      return "unstructured";
    case MaskKind::kBernoulli:
      return "bernoulli";
    default:
      return "n:m";
  }
}

struct Config {
  int b = 2, d = 24, l = 33, n = 16;
  int gB = 1, gC = 1;  // 1: ungrouped (b, n, l)
  bool grouped = false;
  ScalarType dtype = ScalarType::kFloat32;
  MaskKind mask = MaskKind::kDense;
  int k = 0;          // column: kept states; unstructured: largest per-channel count; N:M: N (M = 4)
  PrunedStates pruned = PrunedStates::kZeroTransition;
  bool with_z = true, with_D = true, with_bias = true, softplus = true;
  bool last_state = true;
  int time_segments = 0;
  bool misalign = false;       // u, delta, z, B, C and out start one element past 16-byte alignment
  bool bc_transposed = false;  // B, C stored (b, g, l, n): stride 1 along n, n along l (a view of x_proj's output)
  uint32_t seed = 0;

  std::string describe() const {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "b=%d d=%d l=%d n=%d g=(%d,%d) %s %s k=%d %s%s%s%s%s%s%s P=%d", b, d, l, n,
                  gB, gC, dtype_name(dtype), mask_name(mask), k,
                  pruned == PrunedStates::kZeroTransition ? "zero_transition" : "remove", with_z ? " z" : "",
                  with_D ? " D" : "", with_bias ? " bias" : "", softplus ? " softplus" : "",
                  misalign ? " misaligned" : "", bc_transposed ? " B/C(b,l,n)" : "", time_segments);
    return buf;
  }
};

// Host copy of a problem (values already rounded to the dtype) plus its mask.
struct Problem {
  Config cfg;
  std::vector<float> u, delta, z, B, C, A, D, bias;  // B, C: (b, gB|1, n, l)
  std::vector<uint8_t> keep;                         // (d, n) 0/1
  StateMode mode = StateMode::kDense;
  int n_kept = 0;                  // k (column) or k_max (channel)
  std::vector<int32_t> kept_idx;   // (k,) or (d, k_max)
  std::vector<int32_t> kept_count; // (d,)
};

inline Problem make_problem(const Config& cfg) {
  Problem p;
  p.cfg = cfg;
  std::mt19937 gen(cfg.seed * 7919u + 17u);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  const size_t bdl = static_cast<size_t>(cfg.b) * cfg.d * cfg.l;
  const size_t bc = static_cast<size_t>(cfg.b) * (cfg.grouped ? cfg.gB : 1) * cfg.n * cfg.l;
  const size_t cc = static_cast<size_t>(cfg.b) * (cfg.grouped ? cfg.gC : 1) * cfg.n * cfg.l;
  auto fill = [&](std::vector<float>& v, size_t count, float scale, float shift) {
    v.resize(count);
    for (auto& x : v) x = quantize(normal(gen) * scale + shift, cfg.dtype);
  };
  fill(p.u, bdl, 1.f, 0.f);
  if (cfg.softplus) {
    fill(p.delta, bdl, 0.5f, -1.f);
  } else {
    p.delta.resize(bdl);
    for (auto& x : p.delta) x = quantize(uniform(gen) * 0.5f + 0.01f, cfg.dtype);
  }
  fill(p.z, bdl, 1.f, 0.f);
  fill(p.B, bc, 1.f, 0.f);
  fill(p.C, cc, 1.f, 0.f);
  p.A.resize(static_cast<size_t>(cfg.d) * cfg.n);
  for (auto& x : p.A) x = -std::exp(normal(gen) * 0.5f);
  p.D.resize(cfg.d);
  for (auto& x : p.D) x = normal(gen);
  p.bias.resize(cfg.d);
  for (auto& x : p.bias) x = 0.1f * normal(gen);

  const int d = cfg.d, n = cfg.n;
  p.keep.assign(static_cast<size_t>(d) * n, 0);
  std::vector<int> perm(n);
  auto shuffled = [&]() {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    return perm;
  };
  switch (cfg.mask) {
    case MaskKind::kDense:
      std::fill(p.keep.begin(), p.keep.end(), 1);
      p.mode = StateMode::kDense;
      break;
    case MaskKind::kColumn: {
      const std::vector<int> order = shuffled();
      for (int c = 0; c < d; ++c)
        for (int j = 0; j < cfg.k; ++j) p.keep[static_cast<size_t>(c) * n + order[j]] = 1;
      p.mode = StateMode::kColumn;
      break;
    }
    case MaskKind::kUnstructured:
      for (int c = 0; c < d; ++c) {
        const int count = (c % 3 == 0) ? cfg.k : static_cast<int>(gen() % (cfg.k + 1));
        const std::vector<int> order = shuffled();
        for (int j = 0; j < count; ++j) p.keep[static_cast<size_t>(c) * n + order[j]] = 1;
      }
      p.mode = StateMode::kChannel;
      break;
    case MaskKind::kBernoulli:
      for (size_t i = 0; i < p.keep.size(); ++i) p.keep[i] = uniform(gen) * n < cfg.k ? 1 : 0;
      p.mode = StateMode::kChannel;
      break;
    case MaskKind::kNM:
      for (int c = 0; c < d; ++c)
        for (int g0 = 0; g0 + 4 <= n; g0 += 4) {
          int order4[4] = {0, 1, 2, 3};
          std::shuffle(order4, order4 + 4, gen);
          for (int j = 0; j < cfg.k; ++j) p.keep[static_cast<size_t>(c) * n + g0 + order4[j]] = 1;
        }
      p.mode = StateMode::kChannel;
      break;
  }
  // Kernel tables, as StateLayout builds them.
  if (p.mode == StateMode::kColumn) {
    for (int s = 0; s < n; ++s)
      if (p.keep[s]) p.kept_idx.push_back(s);
    p.n_kept = static_cast<int>(p.kept_idx.size());
  } else if (p.mode == StateMode::kChannel) {
    p.kept_count.assign(d, 0);
    for (int c = 0; c < d; ++c)
      for (int s = 0; s < n; ++s) p.kept_count[c] += p.keep[static_cast<size_t>(c) * n + s];
    p.n_kept = *std::max_element(p.kept_count.begin(), p.kept_count.end());
    p.kept_idx.assign(static_cast<size_t>(d) * p.n_kept, 0);
    for (int c = 0; c < d; ++c) {
      int j = 0;
      for (int s = 0; s < n; ++s)
        if (p.keep[static_cast<size_t>(c) * n + s]) p.kept_idx[static_cast<size_t>(c) * p.n_kept + j++] = s;
    }
  } else {
    p.n_kept = n;
  }
  return p;
}

// The semantics, one timestep at a time, in double: out (b, d, l) and last_state (b, d, n).
inline void reference(const Problem& p, std::vector<double>& out, std::vector<double>& last) {
  const Config& g = p.cfg;
  const int b = g.b, d = g.d, l = g.l, n = g.n;
  const int gBn = g.grouped ? g.gB : 1, gCn = g.grouped ? g.gC : 1;
  out.assign(static_cast<size_t>(b) * d * l, 0.0);
  last.assign(static_cast<size_t>(b) * d * n, 0.0);
  std::vector<double> h(n);
  for (int bi = 0; bi < b; ++bi) {
    for (int c = 0; c < d; ++c) {
      const int gb = c / (d / gBn), gc = c / (d / gCn);
      std::fill(h.begin(), h.end(), 0.0);
      for (int t = 0; t < l; ++t) {
        const size_t i = (static_cast<size_t>(bi) * d + c) * l + t;
        double dt = p.delta[i] + (g.with_bias ? p.bias[c] : 0.f);
        if (g.softplus) dt = dt > 20.0 ? dt : std::log1p(std::exp(dt));
        const double uu = p.u[i];
        double y = 0.0;
        for (int s = 0; s < n; ++s) {
          const double Bv = p.B[((static_cast<size_t>(bi) * gBn + gb) * n + s) * l + t];
          const double Cv = p.C[((static_cast<size_t>(bi) * gCn + gc) * n + s) * l + t];
          const bool kept = p.keep[static_cast<size_t>(c) * n + s] != 0;
          if (kept) {
            h[s] = std::exp(dt * p.A[static_cast<size_t>(c) * n + s]) * h[s] + dt * Bv * uu;
            y += Cv * h[s];
          } else if (g.pruned == PrunedStates::kZeroTransition) {
            y += Cv * dt * Bv * uu;
          }
        }
        if (g.with_D) y += p.D[c] * uu;
        if (g.with_z) {
          const double zz = p.z[i];
          y *= zz / (1.0 + std::exp(-zz));
        }
        out[i] = y;
      }
      for (int s = 0; s < n; ++s)
        last[(static_cast<size_t>(bi) * d + c) * n + s] = p.keep[static_cast<size_t>(c) * n + s] ? h[s] : 0.0;
    }
  }
}

// Device copies of a problem and the params that point at them.
struct DeviceProblem {
  Buffer u, delta, z, B, C, A, D, bias, kept_idx, kept_count, out, last, workspace;
  SelectiveScanParams params;

  explicit DeviceProblem(const Problem& p) {
    const Config& g = p.cfg;
    const size_t shift = g.misalign ? dtype_size(g.dtype) : 0;
    auto put = [shift](Buffer& buf, const std::vector<uint8_t>& raw) {
      buf = Buffer(raw.size(), shift);
      buf.upload(raw.data(), raw.size());
    };
    auto put_f32 = [](Buffer& buf, const std::vector<float>& v) {
      buf = Buffer(v.size() * 4);
      buf.upload(v.data(), v.size() * 4);
    };
    // (rows, n, l) -> (rows, l, n) for the transposed B / C layout
    auto layout_bc = [&](const std::vector<float>& v) {
      if (!g.bc_transposed) return v;
      std::vector<float> t(v.size());
      const size_t rows = v.size() / (static_cast<size_t>(g.n) * g.l);
      for (size_t r = 0; r < rows; ++r)
        for (int s = 0; s < g.n; ++s)
          for (int i = 0; i < g.l; ++i)
            t[(r * g.l + i) * g.n + s] = v[(r * g.n + s) * g.l + i];
      return t;
    };
    put(u, encode(p.u, g.dtype));
    put(delta, encode(p.delta, g.dtype));
    put(z, encode(p.z, g.dtype));
    put(B, encode(layout_bc(p.B), g.dtype));
    put(C, encode(layout_bc(p.C), g.dtype));
    put_f32(A, p.A);
    put_f32(D, p.D);
    put_f32(bias, p.bias);
    if (!p.kept_idx.empty()) {
      kept_idx = Buffer(p.kept_idx.size() * 4);
      kept_idx.upload(p.kept_idx.data(), p.kept_idx.size() * 4);
    }
    if (!p.kept_count.empty()) {
      kept_count = Buffer(p.kept_count.size() * 4);
      kept_count.upload(p.kept_count.data(), p.kept_count.size() * 4);
    }
    const size_t bdl = static_cast<size_t>(g.b) * g.d * g.l;
    out = Buffer(bdl * dtype_size(g.dtype), shift);
    last = Buffer(static_cast<size_t>(g.b) * g.d * g.n * 4);

    SelectiveScanParams& q = params;
    q.batch = g.b;
    q.dim = g.d;
    q.seqlen = g.l;
    q.dstate = g.n;
    q.n_groups_B = g.grouped ? g.gB : 1;
    q.n_groups_C = g.grouped ? g.gC : 1;
    q.dtype = g.dtype;
    const int64_t dl = static_cast<int64_t>(g.d) * g.l;
    q.u = u.get();
    q.u_batch_stride = dl;
    q.u_dim_stride = g.l;
    q.delta = delta.get();
    q.delta_batch_stride = dl;
    q.delta_dim_stride = g.l;
    if (g.with_z) {
      q.z = z.get();
      q.z_batch_stride = dl;
      q.z_dim_stride = g.l;
    }
    q.out = out.get();
    q.out_batch_stride = dl;
    q.out_dim_stride = g.l;
    q.B = B.get();
    q.B_batch_stride = static_cast<int64_t>(q.n_groups_B) * g.n * g.l;
    q.B_group_stride = g.grouped ? static_cast<int64_t>(g.n) * g.l : 0;
    q.B_dstate_stride = g.bc_transposed ? 1 : g.l;
    q.B_seqlen_stride = g.bc_transposed ? g.n : 1;
    q.C = C.get();
    q.C_batch_stride = static_cast<int64_t>(q.n_groups_C) * g.n * g.l;
    q.C_group_stride = g.grouped ? static_cast<int64_t>(g.n) * g.l : 0;
    q.C_dstate_stride = g.bc_transposed ? 1 : g.l;
    q.C_seqlen_stride = g.bc_transposed ? g.n : 1;
    q.A = static_cast<const float*>(A.get());
    q.A_dim_stride = g.n;
    q.A_dstate_stride = 1;
    q.D = g.with_D ? static_cast<const float*>(D.get()) : nullptr;
    q.delta_bias = g.with_bias ? static_cast<const float*>(bias.get()) : nullptr;
    q.delta_softplus = g.softplus;
    q.mode = p.mode;
    q.pruned_states = g.pruned;
    q.kept_idx = static_cast<const int32_t*>(kept_idx.get());
    q.kept_idx_row_stride = p.mode == StateMode::kChannel ? p.n_kept : 0;
    q.kept_count = static_cast<const int32_t*>(kept_count.get());
    q.n_kept = p.mode == StateMode::kDense ? 0 : p.n_kept;
    if (g.last_state) {
      q.last_state = static_cast<float*>(last.get());
      q.last_state_batch_stride = static_cast<int64_t>(g.d) * g.n;
      q.last_state_dim_stride = g.n;
      q.last_state_dstate_stride = 1;
    }
    q.time_segments = g.time_segments;
    const size_t ws = sparsessm::selective_scan_fwd_workspace_bytes(q);
    if (ws > 0) {
      workspace = Buffer(ws);
      q.workspace = workspace.get();
      q.workspace_bytes = ws;
    }
  }
};

}  // namespace scan_test
