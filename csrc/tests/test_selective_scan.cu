// Standalone test of the sparse selective scan kernels, no Python involved:
// random problems (every mask kind and kept-state kernel, both pruned_states, grouped B/C, every
// dtype, optional z / D / bias / softplus, sequences crossing chunks, forced time segments) are
// run through sparsessm::selective_scan_fwd and compared with the double-precision host
// implementation in scan_test_utils.h. Exit status 0 when every case passes.
//
//   cmake -S . -B build -DCMAKE_CUDA_ARCHITECTURES=90a && cmake --build build -j
//   ./build/test_selective_scan            # all cases
//   ./build/test_selective_scan -v         # one line per case
//
// The same file also builds against the host emulation of the kernels (tests/cuda_emulation).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "scan_test_utils.h"

using namespace scan_test;

namespace {

struct Tolerance {
  double rtol, atol;
};

Tolerance out_tolerance(ScalarType t) {
  switch (t) {
    case ScalarType::kFloat16:
      return {1e-2, 1e-2};
    case ScalarType::kBFloat16:
      return {5e-2, 5e-2};
    default:
      return {1e-4, 1e-4};
  }
}

// Largest violation of |a - b| <= atol + rtol |b| (0 when within tolerance), and where.
double worst(const std::vector<float>& got, const std::vector<double>& want, Tolerance tol, size_t& where) {
  double bad = 0.0;
  where = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double excess = err - (tol.atol + tol.rtol * std::fabs(want[i]));
    if (!(excess <= 0.0) && (excess > bad || std::isnan(err))) {
      bad = std::isnan(err) ? INFINITY : excess;
      where = i;
    }
  }
  return bad;
}

bool run_case(const Config& cfg, bool verbose) {
  const Problem prob = make_problem(cfg);
  DeviceProblem dev(prob);
  const char* invalid = sparsessm::selective_scan_fwd_check(dev.params);
  if (invalid != nullptr) {
    std::printf("FAIL %s: params rejected: %s\n", cfg.describe().c_str(), invalid);
    return false;
  }
  const cudaError_t status = sparsessm::selective_scan_fwd(dev.params, nullptr);
  if (status != cudaSuccess) {
    std::printf("FAIL %s: launch returned %d\n", cfg.describe().c_str(), static_cast<int>(status));
    return false;
  }
#if !defined(SPARSESSM_EMULATE)
  SCAN_TEST_CUDA(cudaDeviceSynchronize());
#endif
  std::vector<double> ref_out, ref_last;
  reference(prob, ref_out, ref_last);

  std::vector<uint8_t> raw(dev.out.bytes());
  dev.out.download(raw.data(), raw.size());
  const std::vector<float> out = decode(raw, cfg.dtype);
  size_t where = 0;
  bool ok = true;
  const double bad_out = worst(out, ref_out, out_tolerance(cfg.dtype), where);
  if (bad_out > 0.0) {
    std::printf("FAIL %s: out[%zu] = %g, expected %g\n", cfg.describe().c_str(), where, out[where], ref_out[where]);
    ok = false;
  }
  if (cfg.last_state) {
    std::vector<float> last(ref_last.size());
    dev.last.download(last.data(), last.size() * 4);
    const double bad_last = worst(last, ref_last, {1e-4, 1e-4}, where);
    if (bad_last > 0.0) {
      std::printf("FAIL %s: last_state[%zu] = %g, expected %g\n", cfg.describe().c_str(), where, last[where],
                  ref_last[where]);
      ok = false;
    }
  }
  if (ok && verbose) {
    std::printf("ok   %s (k=%d, P=%d)\n", cfg.describe().c_str(), prob.n_kept,
                sparsessm::selective_scan_fwd_time_segments(dev.params));
  }
  return ok;
}

std::vector<Config> cases() {
  std::vector<Config> list;
  uint32_t seed = 1;
  auto add = [&](Config c) {
    c.seed = seed++;
    list.push_back(c);
  };
  const ScalarType dtypes[] = {ScalarType::kFloat32, ScalarType::kFloat16, ScalarType::kBFloat16};
  const PrunedStates modes[] = {PrunedStates::kZeroTransition, PrunedStates::kRemove};

  // Every mask kind x dtype x pruned_states on a default shape.
  for (ScalarType dt : dtypes) {
    for (PrunedStates ps : modes) {
      Config c;
      c.dtype = dt;
      c.pruned = ps;
      add(c);  // dense
      c.mask = MaskKind::kColumn;
      c.k = 8;
      add(c);
      c.mask = MaskKind::kUnstructured;
      c.k = 6;
      add(c);
      c.mask = MaskKind::kNM;
      c.k = 2;
      add(c);
      c.mask = MaskKind::kBernoulli;
      c.k = 8;
      add(c);
    }
  }
  // Every compile-time kept-state kernel and a few run-time ones, column and per-channel.
  const int ks[][2] = {{4, 16}, {8, 16}, {12, 16}, {16, 32}, {24, 32}, {32, 64}, {64, 64}, {5, 16}, {0, 16}, {100, 128}, {256, 256}};
  for (const auto& kn : ks) {
    for (MaskKind m : {MaskKind::kColumn, MaskKind::kUnstructured}) {
      for (PrunedStates ps : modes) {
        Config c;
        c.b = 1;
        c.d = kn[1] > 64 ? 10 : 40;
        c.l = kn[1] > 64 ? 19 : 45;
        c.n = kn[1];
        c.mask = m;
        c.k = kn[0];
        c.pruned = ps;
        add(c);
      }
    }
  }
  // Dense with static and run-time state counts.
  for (int n : {1, 4, 5, 12, 16, 64, 128, 256}) {
    Config c;
    c.n = n;
    c.d = n > 64 ? 6 : 24;
    c.l = n > 64 ? 9 : 33;
    add(c);
  }
  // Every time-segment count, with sequences that cross many chunks and end mid-segment.
  for (int P : {1, 2, 4, 8, 16, 32, 64, 128}) {
    for (MaskKind m : {MaskKind::kDense, MaskKind::kColumn, MaskKind::kNM}) {
      Config c;
      c.l = P > 32 ? 2 * 8 * P + 37 : 70;  // multi-warp channels: 3 chunks, the last one partial
      c.d = 20;
      c.mask = m;
      c.k = m == MaskKind::kColumn ? 8 : 2;
      c.time_segments = P;
      add(c);
    }
  }
  // Grouped B / C (different group counts), optional inputs off, no softplus, odd sizes.
  for (MaskKind m : {MaskKind::kDense, MaskKind::kColumn, MaskKind::kUnstructured}) {
    Config c;
    c.d = 12;
    c.n = 8;
    c.grouped = true;
    c.gB = 2;
    c.gC = 3;
    c.mask = m;
    c.k = 3;
    add(c);
  }
  {
    Config c;
    c.with_z = c.with_D = c.with_bias = c.softplus = false;
    c.mask = MaskKind::kColumn;
    c.k = 4;
    add(c);
    c.last_state = false;
    add(c);
  }
  for (ScalarType dt : dtypes) {
    Config c;
    c.dtype = dt;
    c.b = 3;
    c.d = 37;
    c.n = 12;
    c.l = 1;
    c.mask = MaskKind::kNM;
    c.k = 2;
    add(c);
    c.l = 257;
    add(c);
  }
  {
    Config c;  // more channels than one block holds, d not a multiple of the block's channels
    c.b = 2;
    c.d = 300;
    c.n = 4;
    c.l = 9;
    add(c);
  }
  return list;
}

// A few inconsistent params must be rejected with a message.
bool params_checks() {
  SelectiveScanParams p;
  bool ok = sparsessm::selective_scan_fwd_check(p) != nullptr;  // empty params
  Problem prob = make_problem(Config{});
  DeviceProblem dev(prob);
  ok = ok && sparsessm::selective_scan_fwd_check(dev.params) == nullptr;
  SelectiveScanParams q = dev.params;
  q.dstate = 300;
  ok = ok && std::strstr(sparsessm::selective_scan_fwd_check(q), "dstate") != nullptr;
  q = dev.params;
  q.n_groups_B = 5;
  ok = ok && std::strstr(sparsessm::selective_scan_fwd_check(q), "n_groups_B") != nullptr;
  q = dev.params;
  q.time_segments = 3;
  ok = ok && std::strstr(sparsessm::selective_scan_fwd_check(q), "time_segments") != nullptr;
  ok = ok && sparsessm::selective_scan_fwd(q, nullptr) == cudaErrorInvalidValue;
  Config cz;
  cz.mask = MaskKind::kColumn;
  cz.k = 4;
  Problem pz = make_problem(cz);
  DeviceProblem dz(pz);
  q = dz.params;
  ok = ok && sparsessm::selective_scan_fwd_workspace_bytes(q) > 0;
  q.workspace = nullptr;
  ok = ok && std::strstr(sparsessm::selective_scan_fwd_check(q), "workspace") != nullptr;
  q = dz.params;
  q.pruned_states = PrunedStates::kRemove;
  ok = ok && sparsessm::selective_scan_fwd_workspace_bytes(q) == 0;
  if (!ok) std::printf("FAIL params checks\n");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-v") == 0) verbose = true;
  }
  int failed = params_checks() ? 0 : 1;
  const std::vector<Config> list = cases();
  for (const Config& c : list) failed += run_case(c, verbose) ? 0 : 1;
  std::printf("%s: %zu cases, %d failed\n", failed ? "FAILED" : "OK", list.size() + 1, failed);
  return failed ? 1 : 0;
}
