// Checks the checkers of the CUDA host emulation (csrc/emulation/cuda_emulation.h): small kernels
// with a deliberate bug each must be reported (shared-memory races, misaligned 16-byte accesses,
// out-of-bounds and never-written shared memory), and correctly synchronised ones must not.
//   c++ -std=c++17 -O1 -pthread -I csrc -I $CUDA_HOME/include tests/cuda_emulation/detectors_test.cpp
// Prints one line per check and "OK: N checks" (exit 0), or the failures (exit 1).
#define SPARSESSM_EMULATE 1

#include <cstdio>
#include <string>

#include "emulation/cuda_emulation.h"

namespace {

using sparsessm_emu::global_load16;
using sparsessm_emu::smem_load;
using sparsessm_emu::smem_store;

float* smem() { return reinterpret_cast<float*>(sparsessm_emu::tls().block->smem.data()); }

int failures = 0;
int checks = 0;

// Runs `body` on one block of `threads` threads; expects an error containing `expected` ("" = none).
template <typename F>
void expect(const char* name, unsigned threads, size_t smem_bytes, const std::string& expected, F body) {
  sparsessm_emu::launch(dim3(1), dim3(threads), smem_bytes, body);
  const std::string& error = sparsessm_emu::last_error();
  const bool ok = expected.empty() ? error.empty() : error.find(expected) != std::string::npos;
  ++checks;
  if (!ok) ++failures;
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name, error.empty() ? "" : ": ", error.c_str());
}

}  // namespace

int main() {
  // -- correct synchronisation: no report
  expect("block barrier orders a write before other threads' reads", 64, 256, "", [] {
    if (threadIdx.x == 0) smem_store(smem(), 1.f);
    __syncthreads();
    (void)smem_load(smem());
  });
  expect("warp barrier orders lanes of one warp", 32, 256, "", [] {
    smem_store(smem() + threadIdx.x, 1.f);
    __syncwarp();
    (void)smem_load(smem() + (threadIdx.x + 1) % 32);
  });
  expect("reads, barrier, then a write by another thread", 64, 256, "", [] {
    if (threadIdx.x == 5) smem_store(smem(), 0.f);
    __syncthreads();
    (void)smem_load(smem());
    __syncthreads();
    if (threadIdx.x == 7) smem_store(smem(), 2.f);
  });
  expect("a thread's own write and read need no barrier", 32, 256, "", [] {
    smem_store(smem() + threadIdx.x, 3.f);
    (void)smem_load(smem() + threadIdx.x);
  });
  expect("aligned 16-byte global load", 32, 0, "", [] {
    alignas(16) static const unsigned char data[64] = {};
    (void)global_load16(data + 16);
  });

  // -- bugs: reported
  expect("read of another thread's write without a barrier", 64, 256, "shared-memory race: read", [] {
    if (threadIdx.x == 0) smem_store(smem(), 1.f);
    if (threadIdx.x == 40) (void)smem_load(smem());
    __syncthreads();
  });
  expect("a shuffle does not order shared memory", 32, 256, "shared-memory race: read", [] {
    if (threadIdx.x == 0) smem_store(smem(), 1.f);
    (void)__shfl_sync(0xffffffffu, 0.f, 0);
    if (threadIdx.x == 1) (void)smem_load(smem());
  });
  // (the emulation resumes the last thread to reach a barrier first: thread 63 reads before thread 0)
  expect("write of a word other threads read, no barrier", 64, 256, "shared-memory race: write", [] {
    if (threadIdx.x == 5) smem_store(smem(), 1.f);
    __syncthreads();
    (void)smem_load(smem());
    if (threadIdx.x == 0) smem_store(smem(), 2.f);
  });
  expect("two threads write one word, no barrier", 64, 256, "shared-memory race: write", [] {
    if (threadIdx.x == 3 || threadIdx.x == 35) smem_store(smem(), 1.f);
  });
  expect("read of never written shared memory", 32, 256, "never written", [] { (void)smem_load(smem() + 7); });
  expect("shared memory out of bounds", 32, 256, "outside the 256 bytes", [] {
    if (threadIdx.x == 0) smem_store(smem() + 64, 1.f);
  });
  expect("misaligned 16-byte global load", 32, 0, "misaligned address (2 bytes off)", [] {
    alignas(16) static const unsigned char data[64] = {};
    (void)global_load16(data + 2);
  });
  expect("misaligned 16-byte shared access", 32, 256, "misaligned offset", [] {
    smem_store(reinterpret_cast<float4*>(reinterpret_cast<unsigned char*>(smem()) + 8), make_float4(0, 0, 0, 0));
  });

  std::printf("%s: %d checks, %d failed\n", failures ? "FAILED" : "OK", checks, failures);
  return failures ? 1 : 0;
}
