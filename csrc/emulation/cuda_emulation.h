// Host emulation of the handful of CUDA features the selective-scan kernels use, so that the very
// same kernel source can be compiled by a plain C++ compiler and run on a CPU (no GPU needed).
//
// Used only by tests (tests/cuda_emulation/, see docs/cuda.md): define SPARSESSM_EMULATE before
// including the kernel headers. Every thread of a block is a fiber (ucontext) on the calling OS
// thread; the threads of a warp meet at real barriers for __shfl_*_sync / __syncwarp, so a
// collective that not all 32 lanes reach (divergence bug) is reported as a deadlock instead of
// silently computing something else. Blocks run one after another, deterministically. It checks the logic (indexing, masks, chunking, the cross-lane
// scan, bounds), not performance, memory-model subtleties or nvcc code generation.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace sparsessm_emu {

constexpr unsigned kWarpSize = 32;
constexpr size_t kFiberStack = 256 * 1024;

struct Fiber;

// Cooperative scheduler of one block's threads (fibers), all on the calling OS thread.
struct Scheduler {
  ucontext_t main_ctx;
  std::vector<std::unique_ptr<Fiber>> fibers;
  Fiber* current = nullptr;
  unsigned long long progress = 0;  // bumped whenever a collective completes or a fiber ends
};

struct ThreadState {
  uint3 thread_idx{0, 0, 0};
  struct Block* block = nullptr;
  unsigned linear = 0;
};

struct Fiber {
  ucontext_t ctx;
  std::vector<unsigned char> stack;
  ThreadState state;
  bool done = false;
};

inline Scheduler*& scheduler() {
  static thread_local Scheduler* s = nullptr;
  return s;
}

inline ThreadState& tls() { return scheduler()->current->state; }

// Give the other threads of the block a turn.
inline void yield() {
  Scheduler* s = scheduler();
  Fiber* me = s->current;
  swapcontext(&me->ctx, &s->main_ctx);
}

// Barrier of `count` threads: the last to arrive releases the others.
class Barrier {
 public:
  explicit Barrier(unsigned count = kWarpSize) : count_(count) {}
  void wait(const char* what) {
    what_ = what;
    const unsigned long long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      ++scheduler()->progress;
      return;
    }
    while (generation_ == generation) yield();
  }
  const char* what() const { return what_; }

 private:
  unsigned count_;
  unsigned arrived_ = 0;
  unsigned long long generation_ = 0;
  const char* what_ = "";
};

struct Warp {
  Barrier barrier{kWarpSize};
  uint64_t slots[kWarpSize] = {};
};

struct Block {
  dim3 block_idx, grid_dim, block_dim;
  std::vector<unsigned char> smem;
  std::vector<std::unique_ptr<Warp>> warps;
  std::unique_ptr<Barrier> block_barrier;
};

inline Warp& my_warp() { return *tls().block->warps[tls().linear / kWarpSize]; }
inline unsigned lane() { return tls().linear % kWarpSize; }

inline void check_full_mask(unsigned mask, const char* what) {
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "sparsessm CUDA emulation: %s with a partial mask 0x%x is not emulated\n", what,
                 mask);
    std::abort();
  }
}

// Every lane publishes its value, then reads the one of lane src_of(lane).
template <typename T, typename SrcFn>
T exchange(T value, SrcFn src_of, const char* what) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "value too large");
  Warp& w = my_warp();
  const unsigned me = lane();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  w.slots[me] = bits;
  w.barrier.wait(what);
  const uint64_t got = w.slots[src_of(me)];
  w.barrier.wait(what);
  T result;
  std::memcpy(&result, &got, sizeof(T));
  return result;
}

// Out of line so that getcontext's "returns twice" does not concern launch()'s locals.
__attribute__((noinline)) inline void init_fiber(Fiber& f, void (*entry)()) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack.data();
  f.ctx.uc_stack.ss_size = f.stack.size();
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, entry, 0);
}

template <typename F>
struct FiberEntry {
  static F*& body() {
    static thread_local F* b = nullptr;
    return b;
  }
  static void run() {
    (*body())();
    Scheduler* s = scheduler();
    s->current->done = true;
    ++s->progress;
    swapcontext(&s->current->ctx, &s->main_ctx);
  }
};

// Runs the grid block after block; the threads of a block are fibers switched at collectives.
// A collective that some thread of a warp never reaches (divergence, early return) is reported.
template <typename F>
void launch(dim3 grid, dim3 block, size_t smem_bytes, F body) {
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads % kWarpSize != 0) {
    std::fprintf(stderr, "sparsessm CUDA emulation: block size %u is not a multiple of 32\n", threads);
    std::abort();
  }
  Scheduler sched;
  Scheduler* saved = scheduler();
  scheduler() = &sched;
  FiberEntry<F>::body() = &body;
  for (unsigned t = 0; t < threads; ++t) {
    sched.fibers.emplace_back(new Fiber());
    sched.fibers.back()->stack.resize(kFiberStack);
  }
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block blk;
        blk.block_idx = dim3(bx, by, bz);
        blk.grid_dim = grid;
        blk.block_dim = block;
        // Poison shared memory so that reading before writing shows up as NaN / garbage.
        blk.smem.assign(smem_bytes + 16, 0xff);
        for (unsigned w = 0; w < threads / kWarpSize; ++w) blk.warps.emplace_back(new Warp());
        blk.block_barrier.reset(new Barrier(threads));
        for (unsigned t = 0; t < threads; ++t) {
          Fiber& f = *sched.fibers[t];
          f.done = false;
          f.state.block = &blk;
          f.state.linear = t;
          f.state.thread_idx = make_uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          init_fiber(f, &FiberEntry<F>::run);
        }
        unsigned remaining = threads;
        while (remaining > 0) {
          const unsigned long long before = sched.progress;
          for (auto& fp : sched.fibers) {
            if (fp->done) continue;
            sched.current = fp.get();
            swapcontext(&sched.main_ctx, &fp->ctx);
            if (fp->done) --remaining;
          }
          if (remaining > 0 && sched.progress == before) {
            std::fprintf(stderr,
                         "sparsessm CUDA emulation: deadlock in block (%u, %u, %u): %u threads wait at a "
                         "collective that the others never reach (divergence or early return)\n",
                         bx, by, bz, remaining);
            std::abort();
          }
        }
      }
    }
  }
  sched.current = nullptr;
  scheduler() = saved;
}

}  // namespace sparsessm_emu

#define threadIdx (::sparsessm_emu::tls().thread_idx)
#define blockIdx (::sparsessm_emu::tls().block->block_idx)
#define blockDim (::sparsessm_emu::tls().block->block_dim)
#define gridDim (::sparsessm_emu::tls().block->grid_dim)

template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  ::sparsessm_emu::check_full_mask(mask, "__shfl_sync");
  return ::sparsessm_emu::exchange(
      value,
      [&](unsigned me) {
        const unsigned base = me & ~static_cast<unsigned>(width - 1);
        return base + (static_cast<unsigned>(src_lane) & static_cast<unsigned>(width - 1));
      },
      "__shfl_sync");
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  ::sparsessm_emu::check_full_mask(mask, "__shfl_up_sync");
  return ::sparsessm_emu::exchange(
      value,
      [&](unsigned me) {
        const unsigned in_group = me & static_cast<unsigned>(width - 1);
        return in_group >= delta ? me - delta : me;
      },
      "__shfl_up_sync");
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::sparsessm_emu::check_full_mask(mask, "__syncwarp");
  ::sparsessm_emu::my_warp().barrier.wait("__syncwarp");
}

inline void __syncthreads() { ::sparsessm_emu::tls().block->block_barrier->wait("__syncthreads"); }
