// Test-only CPU emulation of the CUDA features csrc/cuda uses, so the exact kernel code can run on a machine
// without a GPU: each block's threads run as fibers on the calling thread (one block at a time, so
// function-static "__shared__" variables are block-shared), with barriers for __syncthreads, per-warp exchanges
// for shuffles, and stand-ins for atomics, cub::BlockScan, cub::DeviceRadixSort and c10::cuda.
// It checks launch limits (block size, grid.y) but not shared-memory sizes, alignment faults or timing.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <vector>

#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  unsigned int x, y, z, w;
};
struct uint2 {
  unsigned int x, y;
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;  // one host thread runs every simulated thread

using cudaStream_t = void*;
enum cudaError_t { cudaSuccess = 0 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = 3;  // a small "GPU": grid-stride loops get exercised
  return cudaSuccess;
}

#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(expr) (void)(expr)

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace cuda
}  // namespace c10

namespace mx_emu {

// Each block runs its threads as fibers (ucontext) on the calling thread, round-robin between barriers:
// deterministic, and a read of shared memory that lacks its barrier sees the stale value at once.
struct Fiber {
  ucontext_t ctx;
  int wait = 0;  // 0 runnable, 1 at the block barrier, 2 at its warp barrier, 3 finished
};

struct Block {
  int n = 0, cur = 0, done = 0;
  std::vector<Fiber> fibers;
  ucontext_t main;
  int bar_or = 0, bar_result = 0;
  std::vector<uint64_t> xchg;
  const std::function<void()>* body = nullptr;
};

inline Block* g_block = nullptr;
inline std::vector<std::unique_ptr<char[]>> g_stacks;
constexpr size_t kStack = 256 * 1024;
inline std::vector<unsigned char> dyn_buf;

inline unsigned char* dynamic_smem() { return dyn_buf.data(); }

inline void park(int why) {
  Block& b = *g_block;
  b.fibers[b.cur].wait = why;
  swapcontext(&b.fibers[b.cur].ctx, &b.main);
}

inline void fiber_entry() {
  (*g_block->body)();
  g_block->fibers[g_block->cur].wait = 3;
  ++g_block->done;
}  // returns to Block::main through uc_link

inline void run_block(int n, const std::function<void()>& body) {
  Block b;
  b.n = n;
  b.fibers.resize(n);
  b.xchg.assign(n, 0);
  b.body = &body;
  g_block = &b;
  while (static_cast<int>(g_stacks.size()) < n) g_stacks.emplace_back(new char[kStack]);
  for (int t = 0; t < n; ++t) {
    Fiber& f = b.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks[t].get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &b.main;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  while (b.done < n) {
    for (int t = 0; t < n; ++t) {
      if (b.fibers[t].wait != 0) continue;
      b.cur = t;
      threadIdx = dim3(static_cast<unsigned>(t), 0, 0);
      swapcontext(&b.main, &b.fibers[t].ctx);
    }
    // Everyone is finished or parked: release a complete barrier.
    bool released = false;
    int at_block = 0;
    for (const Fiber& f : b.fibers) at_block += f.wait == 1;
    if (at_block > 0 && at_block == n - b.done) {
      b.bar_result = b.bar_or;
      b.bar_or = 0;
      for (Fiber& f : b.fibers)
        if (f.wait == 1) f.wait = 0;
      released = true;
    }
    for (int w = 0; w < n / 32; ++w) {
      int at_warp = 0;
      for (int l = 0; l < 32; ++l) at_warp += b.fibers[w * 32 + l].wait == 2;
      if (at_warp == 32) {
        for (int l = 0; l < 32; ++l) b.fibers[w * 32 + l].wait = 0;
        released = true;
      }
    }
    if (!released && b.done < n) throw std::runtime_error("emu: deadlock (divergent barrier or shuffle)");
  }
  g_block = nullptr;
}

template <typename T>
T shuffle(T v, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle width");
  Block& b = *g_block;
  const int tid = b.cur, base = tid & ~31;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  b.xchg[tid] = bits;
  park(2);
  bits = b.xchg[base + (src_lane & 31)];
  park(2);  // everyone has read before the buffer is reused
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <typename K>
struct Launch {
  dim3 grid, block;
  size_t smem;
  K kernel;
  template <typename... Args>
  void operator()(Args&&... args) const {
    if (block.x < 32 || block.x > 1024 || block.x % 32 != 0 || block.y != 1 || block.z != 1)
      throw std::runtime_error("emu: bad block size " + std::to_string(block.x));
    if (grid.x < 1 || grid.y < 1 || grid.y > 65535 || grid.z != 1)
      throw std::runtime_error("emu: bad grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y));
    if (smem > 48 * 1024) throw std::runtime_error("emu: dynamic shared memory above 48 KiB");
    blockDim = block;
    gridDim = grid;
    dyn_buf.assign(smem + 16, 0xAB);  // garbage-filled like real shared memory
    const std::function<void()> body = [&] { kernel(args...); };
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, 0);
        run_block(static_cast<int>(block.x), body);
      }
    }
  }
};

template <typename K>
Launch<K> launch(dim3 grid, dim3 block, size_t smem, K kernel) {
  return Launch<K>{grid, block, smem, kernel};
}

}  // namespace mx_emu

inline void __syncthreads() { mx_emu::park(1); }
inline int __syncthreads_or(int p) {
  mx_emu::g_block->bar_or |= p != 0 ? 1 : 0;
  mx_emu::park(1);
  return mx_emu::g_block->bar_result;
}

template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  return mx_emu::shuffle(v, (threadIdx.x & 31) ^ mask);
}
template <typename T>
T __shfl_sync(unsigned, T v, int src) {
  return mx_emu::shuffle(v, src);
}

template <typename T>
T atomicAdd(T* p, T v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline long long __double_as_longlong(double d) {
  long long u;
  std::memcpy(&u, &d, 8);
  return u;
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }

namespace mx {
namespace cuda {
// CUDA's device min for equal argument types.
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
namespace detail {
using std::isnan;
}  // namespace detail
}  // namespace cuda
}  // namespace mx

namespace cub {

// Same interface as cub::BlockScan's ExclusiveSum; no trailing barrier, so (as with cub) reusing the storage
// without a __syncthreads in between is a race the emulation can expose.
template <typename T, int THREADS>
struct BlockScan {
  struct TempStorage {
    T vals[THREADS];
  };
  TempStorage& s;
  explicit BlockScan(TempStorage& st) : s(st) {
    if (blockDim.x != THREADS) throw std::runtime_error("emu: BlockScan size != blockDim");
  }
  void ExclusiveSum(T in, T& out) {
    T agg;
    ExclusiveSum(in, out, agg);
  }
  void ExclusiveSum(T in, T& out, T& agg) {
    const unsigned tid = threadIdx.x;
    s.vals[tid] = in;
    __syncthreads();
    T before{}, total{};
    for (unsigned i = 0; i < THREADS; ++i) {
      if (i < tid) before += s.vals[i];
      total += s.vals[i];
    }
    out = before;
    agg = total;
  }
};

struct DeviceRadixSort {
  template <typename K, typename V>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* kin, K* kout, const V* vin, V* vout, int n,
                               int begin_bit, int end_bit, cudaStream_t) {
    if (temp == nullptr) {
      bytes = 64;
      return cudaSuccess;
    }
    const K mask = end_bit >= int(sizeof(K) * 8) ? ~K(0) : ((K(1) << end_bit) - 1);
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return ((kin[a] & mask) >> begin_bit) < ((kin[b] & mask) >> begin_bit);
    });
    for (int i = 0; i < n; ++i) {
      kout[i] = kin[order[i]];
      vout[i] = vin[order[i]];
    }
    return cudaSuccess;
  }
};

}  // namespace cub
