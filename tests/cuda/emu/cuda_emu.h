// Test-only CPU emulation of the CUDA features csrc/cuda uses, so the exact kernel code can run on a machine
// without a GPU: each block runs on blockDim.x host threads (one block at a time, so function-static
// "__shared__" variables are block-shared), with real barriers for __syncthreads, per-warp exchanges for
// shuffles, host atomics, and stand-ins for cub::BlockScan, cub::DeviceRadixSort and c10::cuda.
// It checks launch limits (block size, grid.y) but not shared-memory sizes, alignment faults or timing.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

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

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

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

// Reusable barrier that also ORs a flag over the arriving threads (for __syncthreads_or).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  int arrive(int flag) {
    std::unique_lock<std::mutex> lk(mu_);
    acc_ |= flag;
    const unsigned long gen = gen_;
    if (++count_ == n_) {
      result_ = acc_;
      acc_ = 0;
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return result_;
    }
    cv_.wait(lk, [&] { return gen_ != gen; });
    return result_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_, count_ = 0, acc_ = 0, result_ = 0;
  unsigned long gen_ = 0;
};

struct Block {
  explicit Block(int threads) : bar(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.emplace_back(new Barrier(32));
    xchg.resize(threads);
  }
  Barrier bar;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<uint64_t> xchg;
};

inline thread_local Block* tl_block = nullptr;
inline std::vector<unsigned char> dyn_buf;

inline unsigned char* dynamic_smem() { return dyn_buf.data(); }

template <typename T>
T shuffle(T v, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle width");
  Block& b = *tl_block;
  const int tid = threadIdx.x, base = tid & ~31;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  b.xchg[tid] = bits;
  b.warps[tid >> 5]->arrive(0);
  bits = b.xchg[base + (src_lane & 31)];
  b.warps[tid >> 5]->arrive(0);  // everyone has read before the buffer is reused
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Persistent worker threads (creating 512 threads per block dominated the run time): run(n, fn) calls fn(t) for
// t in [0, n) on n distinct threads and returns when all are done.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool;  // never destroyed: workers stay parked until the process exits
    return *pool;
  }
  void run(int n, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> lk(mu_);
    while (static_cast<int>(workers_) < n) {
      const int id = static_cast<int>(workers_++);
      std::thread([this, id] { loop(id); }).detach();
    }
    job_ = &fn;
    active_ = n;
    remaining_ = n;
    ++gen_;
    wake_.notify_all();
    done_.wait(lk, [&] { return remaining_ == 0; });
  }

 private:
  void loop(int id) {
    unsigned long seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      wake_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      if (id >= active_) continue;
      const std::function<void(int)>* job = job_;
      lk.unlock();
      (*job)(id);
      lk.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }
  std::mutex mu_;
  std::condition_variable wake_, done_;
  size_t workers_ = 0;
  const std::function<void(int)>* job_ = nullptr;
  int active_ = 0, remaining_ = 0;
  unsigned long gen_ = 0;
};

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
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b(static_cast<int>(block.x));
        Pool::get().run(static_cast<int>(block.x), [&](int t) {
          threadIdx = dim3(static_cast<unsigned>(t), 0, 0);
          blockIdx = dim3(bx, by, 0);
          tl_block = &b;
          kernel(args...);
        });
      }
    }
  }
};

template <typename K>
Launch<K> launch(dim3 grid, dim3 block, size_t smem, K kernel) {
  return Launch<K>{grid, block, smem, kernel};
}

}  // namespace mx_emu

inline void __syncthreads() { mx_emu::tl_block->bar.arrive(0); }
inline int __syncthreads_or(int p) { return mx_emu::tl_block->bar.arrive(p != 0 ? 1 : 0); }

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
