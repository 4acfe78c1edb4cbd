// Prints, as JSON, the launch geometry the dispatcher would use, computed by the very functions of
// csrc/selective_scan/selective_scan_launch.h (tile shape per lanes count P, shared memory per
// block, lanes picked for a shape on a GPU with a given number of SMs). Host-only: no GPU and no
// CUDA runtime needed, only the CUDA headers. Used by benchmarks/kernel_report.py.
//
//   c++ -std=c++17 -DSPARSESSM_EMULATE -I csrc -I $CUDA_HOME/include csrc/tests/launch_geometry.cpp -o geo
//   ./geo SMS N B,D,L [B,D,L ...]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "selective_scan/selective_scan_launch.h"

using sparsessm::detail::KernelMode;

namespace {

const char* mode_name(KernelMode m) {
  return m == KernelMode::kUniform ? "uniform" : (m == KernelMode::kChannel ? "channel" : "channel_excl");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SMS N [B,D,L ...]\n", argv[0]);
    return 2;
  }
  const int sms = std::atoi(argv[1]);
  const int n = std::atoi(argv[2]);
  namespace d = sparsessm::detail;
  std::printf("{\n  \"items\": %d, \"threads\": %d, \"stage_elems\": %d, \"max_auto_lanes\": %d,\n", d::kItems,
              d::kThreads, d::kStageElems, d::kMaxAutoLanes);
  std::printf("  \"tiles\": [\n");
  const int lanes[] = {1, 2, 4, 8, 16, 32, 64, 128};
  for (int i = 0; i < 8; ++i) {
    const d::Tile t = d::tile_of(lanes[i]);
    std::printf("    {\"P\": %d, \"steps\": %d, \"channels\": %d, \"stage_rows\": %d, \"min_blocks_per_sm\": %d}%s\n",
                t.lanes, t.steps, t.channels, t.stage_rows, d::min_blocks_per_sm(t.lanes), i < 7 ? "," : "");
  }
  // shared memory per block for dense (k = n), column 50% (k = n/2) and N:M 50% (k_max = n/2, all n staged)
  std::printf("  ],\n  \"smem_bytes\": [\n");
  bool first = true;
  for (int i = 0; i < 8; ++i) {
    for (int elem : {2, 4}) {
      struct Case {
        const char* mask;
        KernelMode mode;
        int K, R;
      } cases[] = {{"dense", KernelMode::kUniform, n, n},
                   {"column50", KernelMode::kUniform, n / 2, n / 2},
                   {"2:4", KernelMode::kChannelExcl, n / 2, n}};
      for (const Case& c : cases) {
        const d::SmemLayout s = d::smem_layout(lanes[i], c.mode, c.K, c.R, elem);
        std::printf("%s    {\"P\": %d, \"elem_bytes\": %d, \"mask\": \"%s\", \"mode\": \"%s\", \"bytes\": %d}", first ? "" : ",\n",
                    lanes[i], elem, c.mask, mode_name(c.mode), s.words * 4);
        first = false;
      }
    }
  }
  std::printf("\n  ],\n  \"auto_lanes\": [\n");  // dense bf16 with n states
  for (int a = 3; a < argc; ++a) {
    long long b = 0, dim = 0, l = 0;
    if (std::sscanf(argv[a], "%lld,%lld,%lld", &b, &dim, &l) != 3) {
      std::fprintf(stderr, "bad shape %s (expected B,D,L)\n", argv[a]);
      return 2;
    }
    const int P = d::choose_lanes(b * dim, static_cast<int>(l), static_cast<int>(dim), sms, 0, KernelMode::kUniform,
                                  n, n, 2);
    std::printf("    {\"b\": %lld, \"d\": %lld, \"l\": %lld, \"P\": %d, \"blocks\": %lld}%s\n", b, dim, l, P,
                b * ((dim + d::tile_of(P).channels - 1) / d::tile_of(P).channels), a + 1 < argc ? "," : "");
  }
  std::printf("  ]\n}\n");
  return 0;
}
