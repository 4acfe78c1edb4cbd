// Micro-benchmark of the sparse selective scan kernels (CUDA events), no Python involved.
//
//   ./build/bench_selective_scan                          # 1.4B layer: b=8 d=4096 n=16 l=2048, bf16
//   ./build/bench_selective_scan --b 1 --l 16384 --dtype fp16 --masks dense,column50,2:4
//   ./build/bench_selective_scan --segments 0,4,8,16,32,64,128   # sweep the time segments (0 = auto)
//   ./build/bench_selective_scan --pruned remove
//
// Prints, per mask and time-segment count: the kept states k, the time segments P the launch used,
// the median time over --iters launches, the effective bandwidth (u, delta, z, out, B, C read or
// written once) and the speedup over dense with the same P setting.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "scan_test_utils.h"

using namespace scan_test;

namespace {

struct Options {
  int b = 8, d = 4096, n = 16, l = 2048;
  ScalarType dtype = ScalarType::kBFloat16;
  std::vector<std::string> masks = {"dense", "column50", "2:4", "unstructured50"};
  std::vector<int> segments = {0};
  PrunedStates pruned = PrunedStates::kZeroTransition;
  int iters = 20, warmup = 3;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "%s\nusage: bench_selective_scan [--b B] [--d D] [--n N] [--l L] [--dtype fp32|fp16|bf16]\n"
               "       [--masks dense,column50,2:4,unstructured50] [--segments 0,8,32] "
               "[--pruned zero_transition|remove]\n       [--iters 20] [--warmup 3]\n",
               msg);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(("missing value for " + a).c_str());
    const std::string v = argv[++i];
    if (a == "--b") o.b = std::atoi(v.c_str());
    else if (a == "--d") o.d = std::atoi(v.c_str());
    else if (a == "--n") o.n = std::atoi(v.c_str());
    else if (a == "--l") o.l = std::atoi(v.c_str());
    else if (a == "--iters") o.iters = std::max(1, std::atoi(v.c_str()));
    else if (a == "--warmup") o.warmup = std::max(0, std::atoi(v.c_str()));
    else if (a == "--masks") o.masks = split(v);
    else if (a == "--segments") {
      o.segments.clear();
      for (const auto& s : split(v)) o.segments.push_back(std::atoi(s.c_str()));
    } else if (a == "--dtype") {
      if (v == "fp32") o.dtype = ScalarType::kFloat32;
      else if (v == "fp16") o.dtype = ScalarType::kFloat16;
      else if (v == "bf16") o.dtype = ScalarType::kBFloat16;
      else usage(("unknown dtype " + v).c_str());
    } else if (a == "--pruned") {
      if (v == "zero_transition") o.pruned = PrunedStates::kZeroTransition;
      else if (v == "remove") o.pruned = PrunedStates::kRemove;
      else usage(("unknown pruned_states " + v).c_str());
    } else {
      usage(("unknown option " + a).c_str());
    }
  }
  if (o.b < 1 || o.d < 1 || o.n < 1 || o.n > 256 || o.l < 1) usage("sizes must be >= 1 and n <= 256");
  return o;
}

// "dense", "column<pct>", "unstructured<pct>", "N:4".
bool mask_config(const std::string& name, int n, Config& c) {
  if (name == "dense") {
    c.mask = MaskKind::kDense;
    return true;
  }
  int pct = 0, keep = 0, m = 0;
  if (std::sscanf(name.c_str(), "column%d", &pct) == 1) {
    c.mask = MaskKind::kColumn;
    c.k = std::max(0, n - n * pct / 100);
    return true;
  }
  if (std::sscanf(name.c_str(), "unstructured%d", &pct) == 1) {
    c.mask = MaskKind::kBernoulli;
    c.k = std::max(0, n - n * pct / 100);
    return true;
  }
  if (std::sscanf(name.c_str(), "%d:%d", &keep, &m) == 2 && m == 4 && keep >= 1 && keep <= 4) {
    c.mask = MaskKind::kNM;
    c.k = keep;
    return true;
  }
  return false;
}

float time_ms(DeviceProblem& dev, int iters, int warmup) {
  cudaEvent_t start, stop;
  SCAN_TEST_CUDA(cudaEventCreate(&start));
  SCAN_TEST_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) SCAN_TEST_CUDA(sparsessm::selective_scan_fwd(dev.params, nullptr));
  std::vector<float> times;
  for (int i = 0; i < iters; ++i) {
    SCAN_TEST_CUDA(cudaEventRecord(start));
    SCAN_TEST_CUDA(sparsessm::selective_scan_fwd(dev.params, nullptr));
    SCAN_TEST_CUDA(cudaEventRecord(stop));
    SCAN_TEST_CUDA(cudaEventSynchronize(stop));
    float ms = 0.f;
    SCAN_TEST_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  SCAN_TEST_CUDA(cudaEventDestroy(start));
  SCAN_TEST_CUDA(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  cudaDeviceProp prop;
  SCAN_TEST_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs)  b=%d d=%d n=%d l=%d %s %s, median of %d\n", prop.name,
              prop.multiProcessorCount, o.b, o.d, o.n, o.l, dtype_name(o.dtype),
              o.pruned == PrunedStates::kZeroTransition ? "zero_transition" : "remove", o.iters);
  std::printf("%-16s %5s %4s %10s %10s %9s\n", "mask", "k", "P", "ms", "GB/s", "vs dense");
  const double bytes = static_cast<double>(o.b) * o.l * dtype_size(o.dtype) * (4.0 * o.d + 2.0 * o.n);
  for (int seg : o.segments) {
    double dense_ms = 0.0;
    for (const std::string& mask : o.masks) {
      Config c;
      c.b = o.b;
      c.d = o.d;
      c.n = o.n;
      c.l = o.l;
      c.dtype = o.dtype;
      c.pruned = o.pruned;
      c.last_state = false;
      c.time_segments = seg;
      if (!mask_config(mask, o.n, c)) usage(("unknown mask " + mask).c_str());
      const Problem prob = make_problem(c);
      DeviceProblem dev(prob);
      const char* invalid = sparsessm::selective_scan_fwd_check(dev.params);
      if (invalid != nullptr) usage(invalid);
      const float ms = time_ms(dev, o.iters, o.warmup);
      if (c.mask == MaskKind::kDense) dense_ms = ms;
      std::printf("%-16s %5d %4d %10.4f %10.1f %9s\n", mask.c_str(), prob.n_kept,
                  sparsessm::selective_scan_fwd_time_segments(dev.params), ms, bytes / (ms * 1e6),
                  dense_ms > 0.0 ? (std::to_string(dense_ms / ms).substr(0, 5) + "x").c_str() : "-");
    }
  }
  return 0;
}
