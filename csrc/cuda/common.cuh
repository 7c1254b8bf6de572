// Device helpers shared by the CUDA kernels: order-preserving selection keys (the device twin of
// cpu/select_keys.h), vector loads/stores, deterministic warp/block sums, group lookup and small uploads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.h"

#ifdef MX_CUDA_EMU
// tests/cuda/emu: the same kernels on host threads (CUDA builtins, cub and c10::cuda stand-ins).
#include "cuda_emu.h"
#define MX_LAUNCH(grid, block, smem, stream, ...) ::mx_emu::launch(grid, block, smem, __VA_ARGS__)
#define MX_DYNAMIC_SMEM(name) unsigned char* name = ::mx_emu::dynamic_smem()
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cub/cub.cuh>
// kernel<<<grid, block, smem, stream>>>(args): spelled as a macro so the CPU emulator can run the same code.
#define MX_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define MX_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace mx {
namespace cuda {
namespace detail {

// ---- selection keys ---------------------------------------------------------------------------------------
// Same map as cpu/select_keys.h: 0 for v <= 0, the IEEE bits for v > 0, all-ones for NaN. Half types widen to
// float first (exact, order-preserving). unsigned long long (not uint64_t) so atomics and shifts match.
template <typename T>
using key_t = std::conditional_t<std::is_same_v<T, double>, unsigned long long, unsigned int>;

__device__ __forceinline__ unsigned int relu_key_of(float f) {
  if (isnan(f)) return 0xffffffffu;
  return f > 0.f ? __float_as_uint(f) : 0u;
}

__device__ __forceinline__ unsigned long long relu_key_of(double f) {
  if (isnan(f)) return ~0ull;
  return f > 0.0 ? static_cast<unsigned long long>(__double_as_longlong(f)) : 0ull;
}

template <typename T>
__device__ __forceinline__ key_t<T> relu_key(T v) {
  return relu_key_of(static_cast<at::opmath_type<T>>(v));
}

// relu(v) in v's dtype; NaN passes through (it ranks highest), as on the CPU.
template <typename T>
__device__ __forceinline__ T relu_value(T v) {
  const auto f = static_cast<at::opmath_type<T>>(v);
  return (f > 0 || isnan(f)) ? v : T(0);
}

// ---- vector memory access ---------------------------------------------------------------------------------
template <int BYTES>
struct RawVec;
template <>
struct RawVec<16> {
  using type = uint4;
};
template <>
struct RawVec<8> {
  using type = uint2;
};
template <>
struct RawVec<4> {
  using type = unsigned int;
};
template <>
struct RawVec<2> {
  using type = unsigned short;
};

// VEC consecutive elements at p; p must be aligned to min(16, VEC * sizeof(T)) bytes.
template <int VEC, typename T>
__device__ __forceinline__ void load_raw(const T* p, T (&out)[VEC]) {
  constexpr int kBytes = VEC * static_cast<int>(sizeof(T));
  constexpr int kChunk = kBytes >= 16 ? 16 : kBytes;
  static_assert(kBytes % kChunk == 0, "vector width");
  using R = typename RawVec<kChunk>::type;
#pragma unroll
  for (int c = 0; c < kBytes / kChunk; ++c) {
    const R r = reinterpret_cast<const R*>(p)[c];
    memcpy(reinterpret_cast<char*>(out) + c * kChunk, &r, kChunk);
  }
}

template <int VEC, typename T>
__device__ __forceinline__ void store_raw(T* p, const T (&in)[VEC]) {
  constexpr int kBytes = VEC * static_cast<int>(sizeof(T));
  constexpr int kChunk = kBytes >= 16 ? 16 : kBytes;
  static_assert(kBytes % kChunk == 0, "vector width");
  using R = typename RawVec<kChunk>::type;
#pragma unroll
  for (int c = 0; c < kBytes / kChunk; ++c) {
    R r;
    memcpy(&r, reinterpret_cast<const char*>(in) + c * kChunk, kChunk);
    reinterpret_cast<R*>(p)[c] = r;
  }
}

// Loads the first `nv` (<= VEC) elements at p converted to A, zero for the rest. `vec`: p is suitably aligned
// and the full vector lies in bounds whenever nv == VEC (the caller's layout guarantees it).
template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_cvt(const T* p, int nv, bool vec, A (&out)[VEC]) {
  if (vec && nv == VEC) {
    T t[VEC];
    load_raw<VEC>(p, t);
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = static_cast<A>(t[j]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = j < nv ? static_cast<A>(p[j]) : A(0);
  }
}

template <int VEC, typename T, typename A>
__device__ __forceinline__ void store_cvt(T* p, int nv, bool vec, const A (&in)[VEC]) {
  if (vec && nv == VEC) {
    T t[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) t[j] = static_cast<T>(in[j]);
    store_raw<VEC>(p, t);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      if (j < nv) p[j] = static_cast<T>(in[j]);
  }
}

__device__ __forceinline__ float fma_acc(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return __fma_rn(a, b, c); }

// ---- deterministic reductions (fixed shuffle tree; blockDim.x must be a multiple of 32) ---------------------
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block, valid in thread 0. `scratch` holds >= 32 values; callers must reach this uniformly.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A r = A(0);
  if (warp == 0) r = warp_sum(lane < nw ? scratch[lane] : A(0));
  __syncthreads();
  return r;
}

// Group of latent f: the first i with f < ends[i] (ends strictly increasing, m entries).
__device__ __forceinline__ int group_of(int64_t f, const int64_t* __restrict__ ends, int m) {
  int lo = 0, hi = m;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (ends[mid] <= f)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Clamped CSR row range: bad row_offsets can never send a kernel outside [0, nnz).
__device__ __forceinline__ void row_range(const int64_t* __restrict__ ro, int64_t r, int64_t nnz, int64_t& e0,
                                          int64_t& e1) {
  e0 = ro[r];
  e1 = ro[r + 1];
  e0 = e0 < 0 ? 0 : (e0 > nnz ? nnz : e0);
  e1 = e1 < e0 ? e0 : (e1 > nnz ? nnz : e1);
}

// ---- host helpers -------------------------------------------------------------------------------------------
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Small int64 arrays (group ends, select state) go up through pinned memory and an async copy: no stream sync.
inline Tensor upload_int64(const std::vector<int64_t>& host, const at::Device& device) {
#ifdef MX_CUDA_EMU
  return at::tensor(at::IntArrayRef(host), at::TensorOptions().dtype(at::kLong)).to(device);
#endif
  auto pinned = at::empty({static_cast<int64_t>(host.size())},
                          at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(pinned.data_ptr<int64_t>(), host.data(), host.size() * sizeof(int64_t));
  return pinned.to(device, at::kLong, /*non_blocking=*/true);
}

inline Tensor upload_ends(IntArrayRef ends, const at::Device& device) {
  return upload_int64(std::vector<int64_t>(ends.begin(), ends.end()), device);
}

inline int sm_count(const at::Device& device) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device.index()));
  return v > 0 ? v : 1;
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Column tiling for kernels where each thread owns VEC consecutive columns of a d-wide row: at most
// max_threads threads per block, tiles of equal width (a multiple of VEC), block size a multiple of 32.
struct ColTiles {
  int ntile, cols, threads;
};

inline ColTiles col_tiles(int64_t d, int vec, int max_threads) {
  const int64_t ntile = ceil_div(d, int64_t(max_threads) * vec);
  const int64_t cols = ceil_div(ceil_div(d, ntile), vec) * vec;
  const int64_t threads = ceil_div(cols / vec, 32) * 32;
  TORCH_CHECK(ntile <= 65535, "matryoshka_ext: row width ", d, " too large for the CUDA kernels");
  return {static_cast<int>(ntile), static_cast<int>(cols), static_cast<int>(threads)};
}

}  // namespace detail
}  // namespace cuda
}  // namespace mx
