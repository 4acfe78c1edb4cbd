// Host emulation of the handful of CUDA features the selective-scan kernels use, so that the very
// same kernel source can be compiled by a plain C++ compiler and run on a CPU (no GPU needed).
//
// Used only by tests (tests/cuda_emulation/, see docs/cuda.md): define SPARSESSM_EMULATE before
// including the kernel headers. Every thread of a block is a fiber (ucontext) on the calling OS
// thread; the threads of a warp meet at real barriers for __shfl_*_sync / __syncwarp, so a
// collective that not all 32 lanes reach (divergence bug) is reported as a deadlock instead of
// silently computing something else. Blocks run one after another, deterministically.
//
// Besides the logic (indexing, masks, chunking, the cross-lane scan, bounds) it catches what a GPU
// would fault on or what only shows up as rare wrong results there, when the kernel goes through
// the accessors below (smem_load / smem_store / global_load16 / global_store16):
//   * misaligned vector accesses: a 16-byte load or store whose address is not 16-byte aligned;
//   * shared memory out of bounds: an access outside the block's dynamic shared memory;
//   * shared-memory races: every 4-byte word is tagged with its last writer (thread, block barrier
//     epoch, warp barrier epoch) and its readers since; a read of a word another thread wrote, or a
//     write of a word another thread wrote or read, with no __syncthreads() (or, inside one warp,
//     __syncwarp()) in between, is reported. Warp shuffles do not order memory, as on the GPU;
//   * reads of shared memory never written in this block.
// Such an error is printed once per launch, the launch completes, and last_error() returns it
// (the kernels' launch helper turns it into a failed launch status). A deadlock (a collective not
// reached by every thread of its group) aborts. Not covered: performance, the memory model of
// global memory, and nvcc code generation.
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
#include <string>
#include <vector>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace sparsessm_emu {

constexpr unsigned kWarpSize = 32;
constexpr size_t kFiberStack = 256 * 1024;

// ------------------------------------------------------------------------------ fiber contexts
// On x86-64 a fiber switch saves the callee-saved registers and the stack pointer (no system call;
// swapcontext saves and restores the signal mask with one on every switch, which dominated the
// emulation's run time); elsewhere, or with SPARSESSM_EMU_UCONTEXT defined, ucontext.
#if defined(__x86_64__) && !defined(SPARSESSM_EMU_UCONTEXT)
#define SPARSESSM_EMU_FAST_SWITCH 1
extern "C" void sparsessm_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak sparsessm_emu_switch
  .hidden sparsessm_emu_switch
  .type sparsessm_emu_switch, @function
sparsessm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sparsessm_emu_switch, .-sparsessm_emu_switch
)");
#endif

// A suspended execution context: the OS thread's own, or a fiber's.
struct Context {
#if defined(SPARSESSM_EMU_FAST_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Saves the running context in `save` and resumes `load`.
inline void switch_context(Context& save, Context& load) {
#if defined(SPARSESSM_EMU_FAST_SWITCH)
  sparsessm_emu_switch(&save.sp, load.sp);
#else
  swapcontext(&save.uc, &load.uc);
#endif
}

// Prepares `c` to start `entry` (which never returns) on the given stack. Out of line so that
// getcontext's "returns twice" does not concern the caller's locals.
__attribute__((noinline)) inline void make_context(Context& c, unsigned char* stack, size_t size, void (*entry)()) {
#if defined(SPARSESSM_EMU_FAST_SWITCH)
  // The frame sparsessm_emu_switch pops: MXCSR / x87 control word, r15 ... rbp, return address =
  // entry; above it a zero "return address" of entry, so that entry starts with rsp = 8 mod 16.
  uintptr_t base = (reinterpret_cast<uintptr_t>(stack) + size) & ~static_cast<uintptr_t>(15);
  uint64_t* frame = reinterpret_cast<uint64_t*>(base - 72);
  uint32_t mxcsr = 0;
  uint16_t fcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  frame[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fcw) << 32);
  for (int i = 1; i <= 6; ++i) frame[i] = 0;  // r15, r14, r13, r12, rbx, rbp
  frame[7] = reinterpret_cast<uint64_t>(entry);
  frame[8] = 0;
  c.sp = frame;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

struct Fiber;

// Cooperative scheduler of one block's threads (fibers), all on the calling OS thread.
struct Scheduler {
  Context main_ctx;
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
  Context ctx;
  std::unique_ptr<unsigned char[]> stack{new unsigned char[kFiberStack]};  // not zeroed: cheap to create
  ThreadState state;
  bool done = false;
};

// Fibers are reused from launch to launch on each OS thread (their stacks stay mapped).
inline std::vector<std::unique_ptr<Fiber>>& fiber_pool() {
  static thread_local std::vector<std::unique_ptr<Fiber>> pool;
  return pool;
}

inline Scheduler*& scheduler() {
  static thread_local Scheduler* s = nullptr;
  return s;
}

inline ThreadState& tls() { return scheduler()->current->state; }

// Give the other threads of the block a turn.
inline void yield() {
  Scheduler* s = scheduler();
  Fiber* me = s->current;
  switch_context(me->ctx, s->main_ctx);
}

// Barrier of `count` threads: the last to arrive releases the others.
class Barrier {
 public:
  explicit Barrier(unsigned count = kWarpSize) : count_(count) {}
  // Returns true in the thread that completed the barrier (the last to arrive).
  bool wait(const char* what) {
    what_ = what;
    const unsigned long long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      ++scheduler()->progress;
      return true;
    }
    while (generation_ == generation) yield();
    return false;
  }
  const char* what() const { return what_; }
  // Completed barriers so far (the "epoch" the race detector tags accesses with).
  unsigned long long generation() const { return generation_; }

 private:
  unsigned count_;
  unsigned arrived_ = 0;
  unsigned long long generation_ = 0;
  const char* what_ = "";
};

struct Warp {
  Barrier barrier{kWarpSize};  // shuffles and __syncwarp
  uint64_t slots[kWarpSize] = {};
  uint32_t syncwarp_epoch = 0;  // completed __syncwarp() calls (shuffles do not order memory)
};

// Race-detector state of one 4-byte word of shared memory.
struct WordTag {
  int32_t writer = -1;              // thread of the last write, -1 never written
  uint32_t write_epoch = 0;         // block barriers completed at that write
  uint32_t write_warp_epoch = 0;    // the writer's warp barriers completed at that write
  uint32_t read_epoch = ~0u;        // block epoch of the reads recorded below (~0u: none)
  uint32_t reader_warps = 0;        // bit w: warp w read the word in read_epoch
  int32_t reader = -1;              // the only thread that read it in read_epoch, or -2 (several)
  uint32_t read_warp_epoch = 0;     // largest warp epoch of those reads
};

struct Block {
  dim3 block_idx, grid_dim, block_dim;
  std::vector<unsigned char> smem;
  size_t smem_bytes = 0;
  std::vector<WordTag> tags;
  std::vector<std::unique_ptr<Warp>> warps;
  std::unique_ptr<Barrier> block_barrier;
};

// First error of the current launch (empty: none); see last_error().
inline std::string& launch_error() {
  static thread_local std::string e;
  return e;
}
inline std::string& last_launch_error_message() {
  static thread_local std::string e;
  return e;
}

// Message of the error the last launch on this OS thread hit, or "" (then it ran cleanly).
inline const std::string& last_error() { return last_launch_error_message(); }

inline Warp& my_warp() { return *tls().block->warps[tls().linear / kWarpSize]; }
inline unsigned lane() { return tls().linear % kWarpSize; }

// Records the first error of a launch (printed once); the launch goes on.
inline void report(const std::string& what) {
  std::string& e = launch_error();
  if (!e.empty()) return;
  const Block& b = *tls().block;
  e = "sparsessm CUDA emulation: block (" + std::to_string(b.block_idx.x) + ", " + std::to_string(b.block_idx.y) +
      ", " + std::to_string(b.block_idx.z) + ") thread " + std::to_string(tls().linear) + ": " + what;
  std::fprintf(stderr, "%s\n", e.c_str());
}

inline bool aligned(const void* p, size_t bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// A `bytes`-wide global access at p must be aligned to its width, as on the GPU.
inline void check_vector_alignment(const void* p, size_t bytes, const char* what) {
  if (!aligned(p, bytes)) {
    report(std::string(what) + ": " + std::to_string(bytes) + "-byte access at a misaligned address (" +
           std::to_string(reinterpret_cast<uintptr_t>(p) % bytes) + " bytes off)");
  }
}

// Checks (and records) an access of `bytes` bytes of shared memory at p.
inline void smem_access(const void* p, size_t bytes, bool write) {
  Block& b = *tls().block;
  const auto* base = b.smem.data();
  const auto* q = static_cast<const unsigned char*>(p);
  if (q < base || q + bytes > base + b.smem_bytes) {
    report(std::string("shared memory ") + (write ? "store" : "load") + " of " + std::to_string(bytes) +
           " bytes at offset " + std::to_string(static_cast<long long>(q - base)) + " outside the " +
           std::to_string(b.smem_bytes) + " bytes of the block");
    return;
  }
  if (!aligned(p, bytes < 4 ? bytes : (bytes > 16 ? 16 : bytes))) {
    report("shared memory access of " + std::to_string(bytes) + " bytes at a misaligned offset " +
           std::to_string(static_cast<long long>(q - base)));
    return;
  }
  const int32_t me = static_cast<int32_t>(tls().linear);
  const unsigned my_warp_idx = tls().linear / kWarpSize;
  const uint32_t epoch = static_cast<uint32_t>(b.block_barrier->generation());
  const uint32_t wepoch = b.warps[my_warp_idx]->syncwarp_epoch;
  const size_t first = static_cast<size_t>(q - base) / 4, last = (static_cast<size_t>(q - base) + bytes - 1) / 4;
  for (size_t w = first; w <= last; ++w) {
    WordTag& t = b.tags[w];
    const bool same_warp_writer = t.writer >= 0 && static_cast<unsigned>(t.writer) / kWarpSize == my_warp_idx;
    // ordered after the last write: same thread, a block barrier since, or a warp barrier of the
    // writer's (= my) warp since
    const bool after_write = t.writer < 0 || t.writer == me || t.write_epoch != epoch ||
                             (same_warp_writer && wepoch != t.write_warp_epoch);
    const std::string where = "word " + std::to_string(w) + " (byte offset " + std::to_string(4 * w) + ")";
    if (!write) {
      if (t.writer < 0) {
        report("read of shared memory never written in this block: " + where);
        return;
      }
      if (!after_write) {
        report("shared-memory race: read of " + where + " written by thread " + std::to_string(t.writer) +
               " with no barrier in between (block barrier epoch " + std::to_string(epoch) + ")");
        return;
      }
      if (t.read_epoch != epoch) {
        t.read_epoch = epoch;
        t.reader_warps = 0;
        t.reader = me;
        t.read_warp_epoch = wepoch;
      } else {
        if (t.reader != me) t.reader = -2;
        if (wepoch > t.read_warp_epoch) t.read_warp_epoch = wepoch;
      }
      t.reader_warps |= 1u << (my_warp_idx % 32);
    } else {
      if (!after_write) {
        report("shared-memory race: write of " + where + " also written by thread " + std::to_string(t.writer) +
               " with no barrier in between (block barrier epoch " + std::to_string(epoch) + ")");
        return;
      }
      if (t.read_epoch == epoch && t.reader != me) {
        const bool other_warps = (t.reader_warps & ~(1u << (my_warp_idx % 32))) != 0;
        if (other_warps || wepoch == t.read_warp_epoch) {
          report("shared-memory race: write of " + where + " read by " +
                 (t.reader >= 0 ? "thread " + std::to_string(t.reader) : std::string("other threads")) +
                 " with no barrier in between (block barrier epoch " + std::to_string(epoch) + ")");
          return;
        }
      }
      t.writer = me;
      t.write_epoch = epoch;
      t.write_warp_epoch = wepoch;
      t.read_epoch = ~0u;
    }
  }
}

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
    switch_context(s->current->ctx, s->main_ctx);  // never resumed
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
  launch_error().clear();
  Scheduler sched;
  Scheduler* saved = scheduler();
  scheduler() = &sched;
  FiberEntry<F>::body() = &body;
  std::vector<std::unique_ptr<Fiber>>& pool = fiber_pool();
  for (unsigned t = 0; t < threads; ++t) {
    if (pool.empty()) {
      sched.fibers.emplace_back(new Fiber());
    } else {
      sched.fibers.push_back(std::move(pool.back()));
      pool.pop_back();
    }
  }
  Block blk;  // reused block after block (its buffers keep their capacity)
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blk.block_idx = dim3(bx, by, bz);
        blk.grid_dim = grid;
        blk.block_dim = block;
        // Poison shared memory so that reading before writing shows up as NaN / garbage.
        blk.smem.assign(smem_bytes + 16, 0xff);
        blk.smem_bytes = smem_bytes;
        blk.tags.assign((smem_bytes + 3) / 4, WordTag{});
        blk.warps.clear();
        for (unsigned w = 0; w < threads / kWarpSize; ++w) blk.warps.emplace_back(new Warp());
        blk.block_barrier.reset(new Barrier(threads));
        for (unsigned t = 0; t < threads; ++t) {
          Fiber& f = *sched.fibers[t];
          f.done = false;
          f.state.block = &blk;
          f.state.linear = t;
          f.state.thread_idx = make_uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          make_context(f.ctx, f.stack.get(), kFiberStack, &FiberEntry<F>::run);
        }
        unsigned remaining = threads;
        while (remaining > 0) {
          const unsigned long long before = sched.progress;
          for (auto& fp : sched.fibers) {
            if (fp->done) continue;
            sched.current = fp.get();
            switch_context(sched.main_ctx, fp->ctx);
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
  for (auto& f : sched.fibers) pool.push_back(std::move(f));
  last_launch_error_message() = launch_error();
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
  ::sparsessm_emu::Warp& w = ::sparsessm_emu::my_warp();
  if (w.barrier.wait("__syncwarp")) ++w.syncwarp_epoch;
}

inline void __syncthreads() { ::sparsessm_emu::tls().block->block_barrier->wait("__syncthreads"); }

namespace sparsessm_emu {

// Shared memory through the race detector (the kernels' smem accessors call these).
template <typename T>
inline T smem_load(const T* p) {
  smem_access(p, sizeof(T), false);
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
inline void smem_store(T* p, const T& v) {
  smem_access(p, sizeof(T), true);
  std::memcpy(p, &v, sizeof(T));
}

// 16-byte global accesses must be 16-byte aligned.
inline uint4 global_load16(const void* p) {
  check_vector_alignment(p, 16, "global load");
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}

inline void global_store16(void* p, const uint4& v) {
  check_vector_alignment(p, 16, "global store");
  std::memcpy(p, &v, 16);
}

}  // namespace sparsessm_emu
