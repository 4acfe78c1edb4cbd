// Standalone test of the sparse selective scan kernels, no Python involved:
// random problems (every mask kind and kept-state count, both pruned_states, grouped B/C, every
// dtype, optional z / D / bias / softplus, sequences crossing chunks, forced time segments) are
// run through sparsessm::selective_scan_fwd and compared with the double-precision host
// implementation in scan_test_utils.h. Exit status 0 when every case passes.
//
// --sweep ci|full runs the sweep instead: every compiled kernel (dtype x lanes per channel P x
// kernel mode; "ci" takes each (P, mask kind) once with the dtype and the condition rotating, "full"
// all of them under every condition) on an odd sequence length crossing chunks, with a partial last
// stage of B/C rows and a partial last block of channels, and in turn misaligned tensors, B/C in the
// (b, l, n) layout of x_proj's output and g_B != g_C; each case is checked against the reference
// and, for masks, by an identity between runs of the kernel itself:
//   zero_transition with a mask == the dense scan with A = -inf on the pruned states,
//   remove with a mask          == the dense scan on the kept states (per channel for per-channel masks).
//
//   cmake -S . -B build -DCMAKE_CUDA_ARCHITECTURES=90a && cmake --build build -j
//   ./build/test_selective_scan            # all cases
//   ./build/test_selective_scan -v         # one line per case
//   ./build/test_selective_scan --sweep full
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

// Runs the kernel on `prob`: output (decoded to float) and last_state, or false with a message.
bool launch(const Problem& prob, std::vector<float>& out, std::vector<float>& last, std::string& error) {
  DeviceProblem dev(prob);
  if (const char* invalid = sparsessm::selective_scan_fwd_check(dev.params)) {
    error = std::string("params rejected: ") + invalid;
    return false;
  }
  const cudaError_t status = sparsessm::selective_scan_fwd(dev.params, nullptr);
  if (status != cudaSuccess) {
    error = "launch returned " + std::to_string(static_cast<int>(status));
    return false;
  }
#if !defined(SPARSESSM_EMULATE)
  SCAN_TEST_CUDA(cudaDeviceSynchronize());
#endif
  std::vector<uint8_t> raw(dev.out.bytes());
  dev.out.download(raw.data(), raw.size());
  out = decode(raw, prob.cfg.dtype);
  last.assign(static_cast<size_t>(prob.cfg.b) * prob.cfg.d * prob.cfg.n, 0.f);
  if (prob.cfg.last_state) dev.last.download(last.data(), last.size() * 4);
  return true;
}

bool run_case(const Config& cfg, bool verbose) {
  const Problem prob = make_problem(cfg);
  std::vector<float> out, last;
  std::string error;
  if (!launch(prob, out, last, error)) {
    std::printf("FAIL %s: %s\n", cfg.describe().c_str(), error.c_str());
    return false;
  }
  std::vector<double> ref_out, ref_last;
  reference(prob, ref_out, ref_last);
  size_t where = 0;
  bool ok = true;
  const double bad_out = worst(out, ref_out, out_tolerance(cfg.dtype), where);
  if (bad_out > 0.0) {
    std::printf("FAIL %s: out[%zu] = %g, expected %g\n", cfg.describe().c_str(), where, out[where], ref_out[where]);
    ok = false;
  }
  if (cfg.last_state) {
    const double bad_last = worst(last, ref_last, {1e-4, 1e-4}, where);
    if (bad_last > 0.0) {
      std::printf("FAIL %s: last_state[%zu] = %g, expected %g\n", cfg.describe().c_str(), where, last[where],
                  ref_last[where]);
      ok = false;
    }
  }
  if (ok && verbose) {
    DeviceProblem dev(prob);
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

// ------------------------------------------------------------------------------ sweep
// Two runs of the kernel should agree: outputs to a couple of output ulps (the runs sum the same
// terms in different orders), the float32 state to 1e-5.
Tolerance identity_tolerance(ScalarType t) {
  switch (t) {
    case ScalarType::kFloat16:
      return {2e-3, 2e-3};
    case ScalarType::kBFloat16:
      return {1.6e-2, 1.6e-2};
    default:
      return {2e-5, 2e-5};
  }
}

// Largest violation between two runs (`want` taken as the reference values).
double disagreement(const std::vector<float>& got, const std::vector<float>& want, Tolerance tol, size_t& where) {
  return worst(got, std::vector<double>(want.begin(), want.end()), tol, where);
}

// The same problem as a dense one, its mask expressed by A = -inf on the pruned states.
Problem dense_with_inf(const Problem& p) {
  Problem q = p;
  q.cfg.mask = MaskKind::kDense;
  q.mode = StateMode::kDense;
  q.n_kept = p.cfg.n;
  q.kept_idx.clear();
  q.kept_count.clear();
  for (size_t i = 0; i < p.keep.size(); ++i) {
    if (!p.keep[i]) q.A[i] = -INFINITY;
  }
  std::fill(q.keep.begin(), q.keep.end(), 1);
  return q;
}

// The dense problem on the states `states` of channel c alone, or of every channel (c < 0, a
// column mask): the kept rows of A, B and C, in ascending order.
Problem dense_on(const Problem& p, const std::vector<int>& states, int c) {
  const Config& g = p.cfg;
  const int k = static_cast<int>(states.size()), l = g.l, d_out = c < 0 ? g.d : 1;
  Problem q;
  q.cfg = g;
  q.cfg.mask = MaskKind::kDense;
  q.cfg.n = k;
  q.cfg.d = d_out;
  if (c >= 0) q.cfg.grouped = false;  // one channel: the B / C rows of its groups
  q.mode = StateMode::kDense;
  q.n_kept = k;
  auto channel = [&](int i) { return c < 0 ? i : c; };
  auto slice = [&](const std::vector<float>& v) {  // (b, d, l) -> (b, d_out, l)
    std::vector<float> r(static_cast<size_t>(g.b) * d_out * l);
    for (int bi = 0; bi < g.b; ++bi)
      for (int i = 0; i < d_out; ++i)
        std::copy_n(&v[(static_cast<size_t>(bi) * g.d + channel(i)) * l], l,
                    &r[(static_cast<size_t>(bi) * d_out + i) * l]);
    return r;
  };
  q.u = slice(p.u);
  q.delta = slice(p.delta);
  q.z = slice(p.z);
  // (b, G, n, l) -> (b, G', k, l): the kept rows, of every group (c < 0) or of channel c's group
  auto rows = [&](const std::vector<float>& v, int groups) {
    const int groups_out = c < 0 ? groups : 1;
    const int group_of_c = c < 0 ? 0 : c / (g.d / groups);
    std::vector<float> r(static_cast<size_t>(g.b) * groups_out * k * l);
    for (int bi = 0; bi < g.b; ++bi)
      for (int gi = 0; gi < groups_out; ++gi)
        for (int j = 0; j < k; ++j)
          std::copy_n(&v[((static_cast<size_t>(bi) * groups + (c < 0 ? gi : group_of_c)) * g.n + states[j]) * l], l,
                      &r[((static_cast<size_t>(bi) * groups_out + gi) * k + j) * l]);
    return r;
  };
  q.B = rows(p.B, g.grouped ? g.gB : 1);
  q.C = rows(p.C, g.grouped ? g.gC : 1);
  q.A.resize(static_cast<size_t>(d_out) * k);
  q.D.resize(d_out);
  q.bias.resize(d_out);
  for (int i = 0; i < d_out; ++i) {
    for (int j = 0; j < k; ++j) q.A[static_cast<size_t>(i) * k + j] = p.A[static_cast<size_t>(channel(i)) * g.n + states[j]];
    q.D[i] = p.D[channel(i)];
    q.bias[i] = p.bias[channel(i)];
  }
  q.keep.assign(static_cast<size_t>(d_out) * k, 1);
  return q;
}

// The kept states of channel c, ascending.
std::vector<int> kept_states(const Problem& p, int c) {
  std::vector<int> states;
  for (int s = 0; s < p.cfg.n; ++s)
    if (p.keep[static_cast<size_t>(c) * p.cfg.n + s]) states.push_back(s);
  return states;
}

// The identity of a masked problem (see the file comment); prints and returns false on a mismatch.
bool check_identity(const Config& cfg) {
  const Problem prob = make_problem(cfg);
  const Tolerance tol = identity_tolerance(cfg.dtype);
  std::vector<float> out, last, out2, last2;
  std::string error;
  size_t where = 0;
  if (!launch(prob, out, last, error)) {
    std::printf("FAIL %s: %s\n", cfg.describe().c_str(), error.c_str());
    return false;
  }
  if (cfg.pruned == PrunedStates::kZeroTransition) {
    if (!launch(dense_with_inf(prob), out2, last2, error)) {
      std::printf("FAIL %s (dense, A = -inf): %s\n", cfg.describe().c_str(), error.c_str());
      return false;
    }
    // pruned entries of last_state: 0 in the sparse run (semantics), dt u B in the dense one
    const size_t per_batch = static_cast<size_t>(cfg.d) * cfg.n;
    for (size_t i = 0; i < last2.size(); ++i)
      if (!prob.keep[i % per_batch]) last2[i] = 0.f;
    const bool same_out = disagreement(out, out2, tol, where) <= 0.0;
    if (!same_out || disagreement(last, last2, {1e-5, 1e-5}, where) > 0.0) {
      std::printf("FAIL %s: zero_transition != dense with A = -inf on the pruned states (%s[%zu])\n",
                  cfg.describe().c_str(), same_out ? "last_state" : "out", where);
      return false;
    }
    return true;
  }
  const bool column = prob.mode == StateMode::kColumn;
  for (int c = column ? -1 : 0; c < (column ? 0 : cfg.d); ++c) {
    const std::vector<int> states = kept_states(prob, c < 0 ? 0 : c);
    if (states.empty()) continue;  // no dense problem to compare with; the reference check covers it
    if (!launch(dense_on(prob, states, c), out2, last2, error)) {
      std::printf("FAIL %s (dense on the kept states): %s\n", cfg.describe().c_str(), error.c_str());
      return false;
    }
    std::vector<float> mine_out, mine_last;
    for (int bi = 0; bi < cfg.b; ++bi) {
      for (int i = 0; i < (c < 0 ? cfg.d : 1); ++i) {
        const size_t row = static_cast<size_t>(bi) * cfg.d + (c < 0 ? i : c);
        mine_out.insert(mine_out.end(), out.begin() + row * cfg.l, out.begin() + (row + 1) * cfg.l);
        for (int s : states) mine_last.push_back(last[row * cfg.n + s]);
      }
    }
    const bool same_out = disagreement(mine_out, out2, tol, where) <= 0.0;
    if (!same_out || disagreement(mine_last, last2, {1e-5, 1e-5}, where) > 0.0) {
      std::printf("FAIL %s: remove != dense on the kept states (channel %d, %s[%zu])\n", cfg.describe().c_str(), c,
                  same_out ? "last_state" : "out", where);
      return false;
    }
  }
  return true;
}

// Every compiled kernel (dtype x P x kernel mode) under the conditions of the file comment.
std::vector<Config> sweep(bool full) {
  enum Kind { kDense, kColumnZeroTransition, kColumnRemove, kNMZeroTransition, kUnstructuredRemove, kKinds };
  enum Condition { kPlain, kMisaligned, kTransposedBC, kGrouped, kConditions };
  const ScalarType dtypes[] = {ScalarType::kBFloat16, ScalarType::kFloat16, ScalarType::kFloat32};
  std::vector<Config> list;
  int rotate = 0;
  uint32_t seed = 1000;
  for (int P : {1, 2, 4, 8, 16, 32, 64, 128}) {
    const int steps = 16 * P;                        // timesteps per chunk (16 per lane)
    const int per_block = P >= 128 ? 1 : 128 / P;    // channels per block
    for (int kind = 0; kind < kKinds; ++kind, ++rotate) {
      for (int dt = 0; dt < 3; ++dt) {
        for (int cond = 0; cond < kConditions; ++cond) {
          if (!full && (dt != rotate % 3 || cond != rotate % kConditions)) continue;
          Config c;
          c.dtype = dtypes[dt];
          c.seed = seed++;
          c.b = 2;
          c.l = steps + steps / 2 + 3;  // odd: two chunks, the last one partial and ending mid-lane
          // a partial last block of channels (a multiple of 6 for g_B = 2, g_C = 3)
          c.d = cond == kGrouped ? 6 * (per_block / 6 + 1) : per_block + 3;
          c.time_segments = P;
          // 13 (or 12, 7) staged rows: the last stage of G = 2048 / T rows is partial for P <= 32
          c.n = kind == kNMZeroTransition ? 12 : (kind == kColumnZeroTransition || kind == kColumnRemove ? 16 : 13);
          c.pruned = kind == kColumnRemove || kind == kUnstructuredRemove ? PrunedStates::kRemove
                                                                          : PrunedStates::kZeroTransition;
          if (kind == kColumnZeroTransition || kind == kColumnRemove) {
            c.mask = MaskKind::kColumn;
            c.k = 7;
          } else if (kind == kNMZeroTransition) {
            c.mask = MaskKind::kNM;
            c.k = 2;
          } else if (kind == kUnstructuredRemove) {
            c.mask = MaskKind::kUnstructured;
            c.k = 7;
          }
          c.misalign = cond == kMisaligned;
          c.bc_transposed = cond == kTransposedBC;
          if (cond == kGrouped) {
            c.grouped = true;
            c.gB = 2;
            c.gC = 3;
          }
          list.push_back(c);
        }
      }
    }
  }
  return list;
}

int run_sweep(bool full, bool verbose) {
  const std::vector<Config> list = sweep(full);
  int failed = 0, identities = 0;
  for (const Config& c : list) {
    bool ok = run_case(c, verbose);
    if (ok && c.mask != MaskKind::kDense) {
      ok = check_identity(c);
      ++identities;
    }
    failed += ok ? 0 : 1;
  }
  std::printf("%s: sweep (%s) of %zu cases, %d with an identity check, %d failed\n", failed ? "FAILED" : "OK",
              full ? "full" : "ci", list.size(), identities, failed);
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  bool verbose = false;
  const char* sweep_level = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-v") == 0) {
      verbose = true;
    } else if (std::strcmp(argv[i], "--sweep") == 0 && i + 1 < argc) {
      sweep_level = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [-v] [--sweep ci|full]\n", argv[0]);
      return 2;
    }
  }
  if (sweep_level != nullptr) {
    const bool full = std::strcmp(sweep_level, "full") == 0;
    if (!full && std::strcmp(sweep_level, "ci") != 0) {
      std::fprintf(stderr, "--sweep: expected ci or full, got %s\n", sweep_level);
      return 2;
    }
    return run_sweep(full, verbose) ? 1 : 0;
  }
  int failed = params_checks() ? 0 : 1;
  const std::vector<Config> list = cases();
  for (const Config& c : list) failed += run_case(c, verbose) ? 0 : 1;
  std::printf("%s: %zu cases, %d failed\n", failed ? "FAILED" : "OK", list.size() + 1, failed);
  return failed ? 1 : 0;
}
