// CUDA selection: per-row TopK and exact BatchTopK of relu(pre) by radix select on order-preserving keys
// (11-bit digits, most significant first), then an ordered compaction (block prefix scan in index order) so
// ties keep the lower (flat) index and indices ascend per row. No sort, nothing dropped, no host sync.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <climits>

#include "common.h"
#include "cuda/common.cuh"

namespace mx {
namespace cuda {
namespace {

using namespace detail;

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kRowThreads = 512;  // per-row kernels: one block per row
constexpr int kPickThreads = 512;  // single-block pick / row scan

// Shared-memory candidate capacity per row (key + int32 index each).
template <typename K>
constexpr int cand_cap() {
  return sizeof(K) == 4 ? 4096 : 2048;
}

template <typename T>
constexpr int vec_of() {
  return 16 / static_cast<int>(sizeof(T));
}

// Keys of the VEC elements at row[i0..i0+n) (n <= VEC); `aligned`: row is 16-byte aligned and so is every
// multiple of VEC (row length and base pointer checked on the host).
template <int VEC, typename T>
__device__ __forceinline__ void load_keys(const T* __restrict__ row, int i0, int n, bool aligned,
                                          key_t<T> (&keys)[VEC], const int64_t* __restrict__ cols = nullptr) {
  if (aligned && n == VEC) {
    T t[VEC];
    load_raw<VEC>(row + i0, t);
#pragma unroll
    for (int j = 0; j < VEC; ++j) keys[j] = relu_key(t[j]);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) keys[j] = j < n ? relu_key(row[cols ? cols[i0 + j] : i0 + j]) : key_t<T>(0);
  }
}

__device__ __forceinline__ int clamp_n(int64_t left, int vec) {
  return left <= 0 ? 0 : (left >= vec ? vec : static_cast<int>(left));
}

// Adds one key to the histogram of digit (key >> nshift) & mask among keys whose bits above `shift` equal
// `prefix` (all keys when shift == key width). Zero keys (every v <= 0, often half the row) are counted in a
// register instead: they always fall in digit 0 and would serialize the shared-memory atomics.
template <typename K, typename H>
__device__ __forceinline__ void hist_add(K key, int shift, int nshift, K prefix, K mask, H* hist, H& zeros) {
  constexpr int kBitsK = sizeof(K) * 8;
  if (shift >= kBitsK || (key >> shift) == prefix) {
    if (key == K(0))
      ++zeros;
    else
      atomicAdd(&hist[static_cast<int>((key >> nshift) & mask)], H(1));
  }
}

// Finds the digit d with above(d) < remaining <= above(d) + hist[d], where above(d) counts bins > d. Thread t
// owns bins in descending order; one block scan gives each thread the count above its bins.
template <int THREADS, typename C, typename Scan>
__device__ __forceinline__ void find_digit(const C* hist, C remaining, typename Scan::TempStorage& tmp,
                                           int* s_digit, C* s_above) {
  constexpr int kPer = kBins / THREADS;
  static_assert(kBins % THREADS == 0, "bins per thread");
  C local[kPer];
  C sum = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    local[j] = hist[kBins - 1 - (threadIdx.x * kPer + j)];
    sum += local[j];
  }
  C before;
  Scan(tmp).ExclusiveSum(sum, before);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    if (before < remaining && before + local[j] >= remaining) {
      *s_digit = kBins - 1 - (threadIdx.x * kPer + j);
      *s_above = before;
    }
    before += local[j];
  }
}

// Ordered compaction of one row. Item i (in index order) is kept when (key >> shift) > P, or when it equals P
// and fewer than L equal items precede it; the kept items get consecutive positions 0.. in index order and
// `sink(pos, key, index)` runs for pos < limit. Scans stop once `limit` items are kept. Source: the global row
// (cand == nullptr) or `ncand` shared-memory candidates (keys + indices, in index order).
template <typename T, int THREADS, int VEC, typename Scan, typename Sink>
__device__ __forceinline__ void compact_row(const T* __restrict__ row, int F, bool aligned, const key_t<T>* cand_key,
                                            const int* cand_idx, int ncand, int shift, key_t<T> P, int L,
                                            int limit, typename Scan::TempStorage& tmp, Sink sink,
                                            const int64_t* __restrict__ cols = nullptr) {
  using K = key_t<T>;
  constexpr int kTile = THREADS * VEC;
  const bool from_smem = cand_key != nullptr;
  const int n = from_smem ? ncand : F;
  int carry_gt = 0, carry_eq = 0;
  for (int base = 0; base < n; base += kTile) {
    const int i0 = base + threadIdx.x * VEC;
    const int nv = clamp_n(int64_t(n) - i0, VEC);
    K keys[VEC];
    if (from_smem) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) keys[j] = j < nv ? cand_key[i0 + j] : K(0);
    } else {
      load_keys<VEC>(row, i0, nv, aligned, keys, cols);
    }
    unsigned int gt = 0, eq = 0;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (j < nv) {
        const K kk = keys[j] >> shift;
        gt += kk > P;
        eq += kk == P;
      }
    }
    unsigned long long excl, agg;
    Scan(tmp).ExclusiveSum((static_cast<unsigned long long>(eq) << 32) | gt, excl, agg);
    int g_before = carry_gt + static_cast<int>(excl & 0xffffffffu);
    int e_before = carry_eq + static_cast<int>(excl >> 32);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (j < nv) {
        const K kk = keys[j] >> shift;
        const int idx = from_smem ? cand_idx[i0 + j] : i0 + j;
        if (kk > P) {
          const int pos = g_before + min(e_before, L);
          if (pos < limit) sink(pos, keys[j], idx);
          ++g_before;
        } else if (kk == P) {
          if (e_before < L) {
            const int pos = g_before + e_before;
            if (pos < limit) sink(pos, keys[j], idx);
          }
          ++e_before;
        }
      }
    }
    carry_gt += static_cast<int>(agg & 0xffffffffu);
    carry_eq += static_cast<int>(agg >> 32);
    __syncthreads();  // scan storage is reused by the next tile
    if (carry_gt + min(carry_eq, L) >= limit) break;  // block-uniform
  }
}

// Per-row TopK: one block per row. Radix passes histogram the row (global, served mostly from L2 right after
// the first read); as soon as every item at or above the running prefix fits in shared memory (normally after
// the first pass) they are collected there in index order and the remaining passes and the final compaction
// run on them. Rows that never fit (ties at 0, k near F) stay on the global path: slower, same result.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
    topk_rows_kernel(const T* __restrict__ pre, int F, int64_t ld, const int64_t* __restrict__ cols, int k,
                     bool aligned, T* __restrict__ out_v, int64_t* __restrict__ out_i) {
  using K = key_t<T>;
  constexpr int VEC = vec_of<T>();
  constexpr int kTile = THREADS * VEC;
  constexpr int kBitsK = sizeof(K) * 8;
  constexpr int CAP = cand_cap<K>();
  using ScanLL = cub::BlockScan<unsigned long long, THREADS>;
  using ScanI = cub::BlockScan<int, THREADS>;
  __shared__ union {
    typename ScanLL::TempStorage ll;
    typename ScanI::TempStorage i;
  } scan;
  __shared__ int hist[kBins];
  __shared__ K cand_key[CAP];
  __shared__ int cand_idx[CAP];
  __shared__ int s_digit, s_above;

  const int64_t r = blockIdx.x;
  // Row r of pre [n, ld]; cols (AuxK: the dead columns, ascending, aligned == false) maps item i to column
  // cols[i], else item i is column i. Items are ranked and tie-broken by i, reported by column.
  const T* row = pre + r * ld;
  K prefix = 0;
  int shift = kBitsK, remaining = k, ncand = -1;  // ncand >= 0: candidates live in shared memory
  while (shift > 0) {
    const int width = shift < kDigitBits ? shift : kDigitBits;
    const int nshift = shift - width;
    const K mask = (K(1) << width) - 1;
    for (int i = threadIdx.x; i < kBins; i += THREADS) hist[i] = 0;
    if (threadIdx.x == 0) s_digit = 0, s_above = 0;
    __syncthreads();
    int zeros = 0;
    if (ncand >= 0) {
      for (int i = threadIdx.x; i < ncand; i += THREADS)
        hist_add(cand_key[i], shift, nshift, prefix, mask, hist, zeros);
    } else {
      // Two tiles per iteration keep more loads in flight.
      for (int base = 0; base < F; base += 2 * kTile) {
        const int ia = base + threadIdx.x * VEC, ib = ia + kTile;
        const int na = clamp_n(int64_t(F) - ia, VEC), nb = clamp_n(int64_t(F) - ib, VEC);
        K ka[VEC], kb[VEC];
        load_keys<VEC>(row, ia, na, aligned, ka, cols);
        load_keys<VEC>(row, ib, nb, aligned, kb, cols);
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (j < na) hist_add(ka[j], shift, nshift, prefix, mask, hist, zeros);
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (j < nb) hist_add(kb[j], shift, nshift, prefix, mask, hist, zeros);
      }
    }
    if (zeros) atomicAdd(&hist[0], zeros);
    __syncthreads();
    find_digit<THREADS, int, ScanI>(hist, remaining, scan.i, &s_digit, &s_above);
    __syncthreads();
    const int digit = s_digit;
    const int in_bin = hist[digit];
    remaining -= s_above;
    prefix = (prefix << width) | K(digit);
    shift = nshift;
    __syncthreads();  // everyone has read hist / s_digit before they are reset
    if (ncand < 0 && shift > 0) {
      const int total = (k - remaining) + in_bin;  // items with (key >> shift) >= prefix
      if (total <= CAP) {
        compact_row<T, THREADS, VEC, ScanLL>(
            row, F, aligned, nullptr, nullptr, 0, shift, prefix, INT_MAX, total, scan.ll,
            [&](int pos, K key, int idx) {
              cand_key[pos] = key;
              cand_idx[pos] = idx;
            },
            cols);
        ncand = total;
        __syncthreads();
      }
    }
  }
  // prefix is now the k-th largest key T; `remaining` items equal to T are kept (the lowest indices).
  T* ov = out_v + r * k;
  int64_t* oi = out_i + r * k;
  const bool in_smem = ncand >= 0;
  compact_row<T, THREADS, VEC, ScanLL>(row, F, aligned, in_smem ? cand_key : nullptr, in_smem ? cand_idx : nullptr,
                                       ncand, 0, prefix, remaining, k, scan.ll,
                                       [&](int pos, K, int idx) {
                                         const int64_t c = cols ? cols[idx] : idx;
                                         oi[pos] = c;
                                         ov[pos] = relu_value(row[c]);
                                       },
                                       cols);
}

// ---- BatchTopK ------------------------------------------------------------------------------------------------
// state[0] = key prefix found so far (bits), state[1] = how many items at that prefix are still to be taken.

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
    batch_hist_kernel(const T* __restrict__ pre, int64_t total, bool aligned, const int64_t* __restrict__ state,
                      int shift, int width, unsigned long long* __restrict__ ghist) {
  using K = key_t<T>;
  constexpr int VEC = vec_of<T>();
  constexpr int kTile = THREADS * VEC;
  __shared__ unsigned int hist[kBins];
  for (int i = threadIdx.x; i < kBins; i += THREADS) hist[i] = 0;
  __syncthreads();
  const K prefix = static_cast<K>(state[0]);
  const int nshift = shift - width;
  const K mask = (K(1) << width) - 1;
  unsigned int zeros = 0;
  const int64_t ntile = ceil_div(total, kTile);
  for (int64_t t = blockIdx.x; t < ntile; t += 2 * int64_t(gridDim.x)) {
    const int64_t ia = t * kTile + threadIdx.x * VEC;
    const int64_t ib = ia + int64_t(gridDim.x) * kTile;  // the tile one grid stride later
    const int na = clamp_n(total - ia, VEC);
    const int nb = t + gridDim.x < ntile ? clamp_n(total - ib, VEC) : 0;
    K ka[VEC], kb[VEC];
    load_keys<VEC>(pre + ia, 0, na, aligned, ka);
    if (nb > 0) load_keys<VEC>(pre + ib, 0, nb, aligned, kb);
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      if (j < na) hist_add(ka[j], shift, nshift, prefix, mask, hist, zeros);
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      if (j < nb) hist_add(kb[j], shift, nshift, prefix, mask, hist, zeros);
  }
  if (zeros) atomicAdd(&hist[0], zeros);
  __syncthreads();
  // Integer atomics: the totals do not depend on the order.
  for (int i = threadIdx.x; i < kBins; i += THREADS)
    if (hist[i]) atomicAdd(&ghist[i], static_cast<unsigned long long>(hist[i]));
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS)
    batch_pick_kernel(unsigned long long* __restrict__ ghist, int64_t* __restrict__ state, int width) {
  using Scan = cub::BlockScan<unsigned long long, THREADS>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int s_digit;
  __shared__ unsigned long long s_above;
  if (threadIdx.x == 0) s_digit = 0, s_above = 0;
  const unsigned long long prefix = static_cast<unsigned long long>(state[0]);
  const unsigned long long remaining = static_cast<unsigned long long>(state[1]);
  __syncthreads();
  find_digit<THREADS, unsigned long long, Scan>(ghist, remaining, tmp, &s_digit, &s_above);
  __syncthreads();
  if (threadIdx.x == 0) {
    state[0] = static_cast<int64_t>((prefix << width) | static_cast<unsigned long long>(s_digit));
    state[1] = static_cast<int64_t>(remaining - s_above);
  }
  for (int i = threadIdx.x; i < kBins; i += THREADS) ghist[i] = 0;  // ready for the next pass
}

// Per row: items above the threshold key T and items equal to it.
template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
    batch_count_kernel(const T* __restrict__ pre, int F, bool aligned, const int64_t* __restrict__ state,
                       int64_t* __restrict__ gt, int64_t* __restrict__ eq) {
  using K = key_t<T>;
  constexpr int VEC = vec_of<T>();
  constexpr int kTile = THREADS * VEC;
  __shared__ long long scratch[32];
  const int64_t r = blockIdx.x;
  const T* row = pre + r * F;
  const K thr = static_cast<K>(state[0]);
  long long a = 0, b = 0;
  for (int base = 0; base < F; base += kTile) {
    const int i0 = base + threadIdx.x * VEC;
    const int nv = clamp_n(int64_t(F) - i0, VEC);
    K keys[VEC];
    load_keys<VEC>(row, i0, nv, aligned, keys);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (j < nv) {
        a += keys[j] > thr;
        b += keys[j] == thr;
      }
    }
  }
  a = block_sum(a, scratch);
  b = block_sum(b, scratch);
  if (threadIdx.x == 0) gt[r] = a, eq[r] = b;
}

// One block: grants the state[1] ties in row order (earlier rows first) and builds row_offsets.
template <int THREADS>
__global__ void __launch_bounds__(THREADS)
    batch_scan_kernel(const int64_t* __restrict__ gt, const int64_t* __restrict__ eq, int64_t n,
                      const int64_t* __restrict__ state, int64_t* __restrict__ row_offsets,
                      int64_t* __restrict__ granted) {
  using Scan = cub::BlockScan<long long, THREADS>;
  __shared__ typename Scan::TempStorage tmp;
  const long long ties = state[1];
  long long carry_eq = 0, carry_off = 0;
  if (threadIdx.x == 0) row_offsets[0] = 0;
  for (int64_t base = 0; base < n; base += THREADS) {
    const int64_t r = base + threadIdx.x;
    const long long e = r < n ? eq[r] : 0, g = r < n ? gt[r] : 0;
    long long e_before, e_agg;
    Scan(tmp).ExclusiveSum(e, e_before, e_agg);
    __syncthreads();
    e_before += carry_eq;
    long long take = ties - e_before;
    take = take < 0 ? 0 : (take > e ? e : take);
    long long s_before, s_agg;
    Scan(tmp).ExclusiveSum(g + take, s_before, s_agg);
    __syncthreads();
    if (r < n) {
      row_offsets[r + 1] = carry_off + s_before + g + take;
      granted[r] = take;
    }
    carry_eq += e_agg;
    carry_off += s_agg;
  }
}

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
    batch_compact_kernel(const T* __restrict__ pre, int F, bool aligned, const int64_t* __restrict__ state,
                         const int64_t* __restrict__ row_offsets, const int64_t* __restrict__ granted, int64_t nnz,
                         T* __restrict__ out_v, int64_t* __restrict__ out_i) {
  using K = key_t<T>;
  constexpr int VEC = vec_of<T>();
  using ScanLL = cub::BlockScan<unsigned long long, THREADS>;
  __shared__ typename ScanLL::TempStorage tmp;
  const int64_t r = blockIdx.x;
  const T* row = pre + r * F;
  int64_t e0, e1;
  row_range(row_offsets, r, nnz, e0, e1);
  const int limit = static_cast<int>(min(e1 - e0, int64_t(F)));
  if (limit <= 0) return;  // block-uniform
  const int L = static_cast<int>(min(granted[r], int64_t(F)));
  T* ov = out_v + e0;
  int64_t* oi = out_i + e0;
  compact_row<T, THREADS, VEC, ScanLL>(row, F, aligned, nullptr, nullptr, 0, 0, static_cast<K>(state[0]), L, limit,
                                       tmp, [&](int pos, K, int idx) {
                                         oi[pos] = idx;
                                         ov[pos] = relu_value(row[idx]);
                                       });
}

bool rows_aligned(const Tensor& pre) {
  return aligned16(pre.data_ptr()) && (pre.size(1) * pre.element_size()) % 16 == 0;
}

}  // namespace

Csr topk_select(const Tensor& pre_in, int64_t k) {
  const auto [n, f] = check_select(pre_in, k);
  TORCH_CHECK_VALUE(f < INT_MAX, "pre: F = ", f, " too large for the CUDA kernels");
  c10::cuda::CUDAGuard guard(pre_in.device());
  const Tensor pre = pre_in.contiguous();
  auto values = at::empty({n * k}, pre.options());
  auto indices = at::empty({n * k}, pre.options().dtype(at::kLong));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool aligned = rows_aligned(pre);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "mx_topk_select_cuda", [&] {
    MX_LAUNCH(static_cast<unsigned>(n), kRowThreads, 0, stream, topk_rows_kernel<scalar_t, kRowThreads>)(
        pre.data_ptr<scalar_t>(), static_cast<int>(f), f, nullptr, static_cast<int>(k), aligned,
        values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto row_offsets = at::arange(0, n * k + 1, k, pre.options().dtype(at::kLong));
  return {values, indices, row_offsets};
}

// AuxK's selection: per row the top k of relu(pre) over the columns `cols` (int64, strictly ascending, in
// [0, F); checked on the host), read in place from the encoder's pre-activations. Indices are column ids.
Csr topk_select_cols(const Tensor& pre_in, const Tensor& cols_in, int64_t k) {
  const int64_t n = pre_in.size(0), f = pre_in.size(1), fc = cols_in.numel();
  c10::cuda::CUDAGuard guard(pre_in.device());
  const Tensor pre = pre_in.contiguous();
  const Tensor cols = cols_in.contiguous();
  auto values = at::empty({n * k}, pre.options());
  auto indices = at::empty({n * k}, pre.options().dtype(at::kLong));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "mx_topk_select_cols_cuda", [&] {
    MX_LAUNCH(static_cast<unsigned>(n), kRowThreads, 0, stream, topk_rows_kernel<scalar_t, kRowThreads>)(
        pre.data_ptr<scalar_t>(), static_cast<int>(fc), f, cols.data_ptr<int64_t>(), static_cast<int>(k), false,
        values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto row_offsets = at::arange(0, n * k + 1, k, pre.options().dtype(at::kLong));
  return {values, indices, row_offsets};
}

Csr batch_topk_select(const Tensor& pre_in, int64_t k) {
  const auto [n, f] = check_select(pre_in, k);
  TORCH_CHECK_VALUE(f < INT_MAX, "pre: F = ", f, " too large for the CUDA kernels");
  c10::cuda::CUDAGuard guard(pre_in.device());
  const Tensor pre = pre_in.contiguous();
  const int64_t total = n * f, K = n * k;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = pre.options().dtype(at::kLong);
  Tensor state = upload_int64({0, K}, pre.device());
  Tensor ghist = at::zeros({kBins}, opts);
  Tensor gt = at::empty({n}, opts), eq = at::empty({n}, opts), granted = at::empty({n}, opts);
  Tensor row_offsets = at::empty({n + 1}, opts);
  auto values = at::empty({K}, pre.options());
  auto indices = at::empty({K}, opts);
  const bool flat_aligned = aligned16(pre.data_ptr());
  const bool aligned = rows_aligned(pre);
  const int sms = sm_count(pre.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "mx_batch_topk_select_cuda", [&] {
    using Key = key_t<scalar_t>;
    constexpr int kBitsK = sizeof(Key) * 8;
    constexpr int64_t kTile = kRowThreads * vec_of<scalar_t>();
    // Enough blocks to fill the GPU, and few enough items per block for 32-bit shared counters.
    const int64_t ntile = ceil_div(total, kTile);
    const int64_t grid =
        std::max<int64_t>(1, std::min<int64_t>(ntile, std::max<int64_t>(sms * 4, (total >> 30) + 1)));
    const scalar_t* p = pre.data_ptr<scalar_t>();
    auto* gh = reinterpret_cast<unsigned long long*>(ghist.data_ptr<int64_t>());
    for (int shift = kBitsK; shift > 0;) {
      const int width = std::min(shift, kDigitBits);
      MX_LAUNCH(static_cast<unsigned>(grid), kRowThreads, 0, stream, batch_hist_kernel<scalar_t, kRowThreads>)(
          p, total, flat_aligned, state.data_ptr<int64_t>(), shift, width, gh);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      MX_LAUNCH(1, kPickThreads, 0, stream, batch_pick_kernel<kPickThreads>)(gh, state.data_ptr<int64_t>(), width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      shift -= width;
    }
    MX_LAUNCH(static_cast<unsigned>(n), kRowThreads, 0, stream, batch_count_kernel<scalar_t, kRowThreads>)(
        p, static_cast<int>(f), aligned, state.data_ptr<int64_t>(), gt.data_ptr<int64_t>(), eq.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    MX_LAUNCH(1, kPickThreads, 0, stream, batch_scan_kernel<kPickThreads>)(
        gt.data_ptr<int64_t>(), eq.data_ptr<int64_t>(), n, state.data_ptr<int64_t>(),
        row_offsets.data_ptr<int64_t>(), granted.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    MX_LAUNCH(static_cast<unsigned>(n), kRowThreads, 0, stream, batch_compact_kernel<scalar_t, kRowThreads>)(
        p, static_cast<int>(f), aligned, state.data_ptr<int64_t>(), row_offsets.data_ptr<int64_t>(),
        granted.data_ptr<int64_t>(), K, values.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {values, indices, row_offsets};
}

}  // namespace cuda
}  // namespace mx

// Registered from csrc/cuda_dispatch.cpp, which runs the argument checks first.
