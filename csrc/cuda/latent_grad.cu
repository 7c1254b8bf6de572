// CUDA latent-major weight gradient, deterministic without float atomics: entries are stably sorted by latent
// (cub radix sort on the latent id, only as many bits as F needs), then one warp per (latent, 256-column tile)
// reduces that latent's entries in entry order into registers and writes its gradient row once. The warp
// stages 32 entries' (value, row) in lanes and broadcasts them by shuffles, so the inner loop issues only the
// S loads; consecutive latents belong to one group, which keeps that group's slab of S hot in L2.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <climits>

#include "common.h"
#include "cuda/common.cuh"

namespace mx {
namespace cuda {
namespace {

using namespace detail;

constexpr int kWarpsPerBlock = 8;
constexpr int kTileCols = 256;  // columns per warp: 32 lanes x 8 values

// row_of[e] = the row owning entry e (rows clamped into [0, nnz); entries outside every row keep -1).
__global__ void rows_of_kernel(const int64_t* __restrict__ row_offsets, int64_t nnz, int* __restrict__ row_of) {
  int64_t e0, e1;
  row_range(row_offsets, blockIdx.x, nnz, e0, e1);
  for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) row_of[e] = static_cast<int>(blockIdx.x);
}

// Sort keys: the latent id, or F for an out-of-range index (sorted last, never reduced).
__global__ void keys_kernel(const int64_t* __restrict__ indices, int64_t nnz, int64_t F, int* __restrict__ keys,
                            int* __restrict__ perm) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < nnz; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = indices[e];
    keys[e] = (i >= 0 && i < F) ? static_cast<int>(i) : static_cast<int>(F);
    perm[e] = static_cast<int>(e);
  }
}

// seg[f] = first sorted position with key >= f, for f in [0, F]: latent f owns [seg[f], seg[f + 1]).
__global__ void segments_kernel(const int* __restrict__ keys, int nnz, int F, int* __restrict__ seg) {
  for (int64_t f = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; f <= F; f += int64_t(gridDim.x) * blockDim.x) {
    int lo = 0, hi = nnz;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (keys[mid] < f)
        lo = mid + 1;
      else
        hi = mid;
    }
    seg[f] = lo;
  }
}

// grad[f, cols] = sum over f's entries (entry order) of value * S[group(f), row, cols]; sums[f] = sum of values.
// ST: S's dtype (the values' dtype or the accumulation dtype); OT: the output dtype.
template <typename T, typename ST, typename OT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    latent_reduce_kernel(const ST* __restrict__ S, const T* __restrict__ values, const int* __restrict__ perm,
                         const int* __restrict__ row_of, const int* __restrict__ seg, int nnz,
                         const int64_t* __restrict__ ends, int m, int64_t n, int64_t d, int F, bool vec,
                         OT* __restrict__ grad, OT* __restrict__ sums) {
  using A = at::opmath_type<T>;
  constexpr int VEC = 16 / sizeof(ST);
  constexpr int U = kTileCols / (32 * VEC);
  const int lane = threadIdx.x & 31;
  const int f = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (f >= F) return;  // warp-uniform; no block-level synchronization below
  const int tile = blockIdx.y;
  int64_t col[U];
  int nv[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    col[u] = int64_t(tile) * kTileCols + u * 32 * VEC + lane * VEC;
    nv[u] = static_cast<int>(col[u] >= d ? 0 : min(int64_t(VEC), d - col[u]));
  }
  const ST* Sg = S + int64_t(group_of(f, ends, m)) * n * d;
  int q0 = seg[f], q1 = seg[f + 1];
  q0 = q0 < 0 ? 0 : (q0 > nnz ? nnz : q0);
  q1 = q1 < q0 ? q0 : (q1 > nnz ? nnz : q1);

  A acc[U][VEC];
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int q = 0; q < VEC; ++q) acc[u][q] = A(0);
  A total = A(0);

  for (int qc = q0; qc < q1; qc += 32) {
    const int cnt = min(32, q1 - qc);
    A my_a = A(0);
    int my_r = -1;
    if (lane < cnt) {
      const int e = perm[qc + lane];
      if (e >= 0 && e < nnz) {
        my_a = static_cast<A>(values[e]);
        my_r = row_of[e];
      }
    }
    for (int j = 0; j < cnt; j += 4) {
      A av[4];
      int rv[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        av[t] = __shfl_sync(0xffffffffu, my_a, (j + t) & 31);
        rv[t] = __shfl_sync(0xffffffffu, my_r, (j + t) & 31);
        if (j + t >= cnt) av[t] = A(0), rv[t] = -1;
      }
      // Four entries' loads in flight, then the adds in entry order (zero values skipped, as on the CPU).
      A s[4][U][VEC];
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const bool use = av[t] != A(0) && rv[t] >= 0 && rv[t] < n;
#pragma unroll
        for (int u = 0; u < U; ++u) load_cvt<VEC>(Sg + int64_t(rv[t]) * d + col[u], use ? nv[u] : 0, vec, s[t][u]);
      }
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        if (j + t < cnt) total += av[t];
        if (av[t] != A(0) && rv[t] >= 0 && rv[t] < n) {
#pragma unroll
          for (int u = 0; u < U; ++u)
#pragma unroll
            for (int q = 0; q < VEC; ++q) acc[u][q] = fma_acc(av[t], s[t][u][q], acc[u][q]);
        }
      }
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u)
    if (nv[u] > 0) store_cvt<VEC>(grad + int64_t(f) * d + col[u], nv[u], vec, acc[u]);
  if (tile == 0 && lane == 0) sums[f] = static_cast<OT>(total);
}

}  // namespace

std::tuple<Tensor, Tensor> latent_grad(const Tensor& S_in, const Tensor& values_in, const Tensor& indices_in,
                                       const Tensor& row_offsets_in, IntArrayRef group_ends, int64_t num_latents,
                                       at::ScalarType dtype, bool transposed) {
  check_latent_grad_args(S_in, values_in, indices_in, row_offsets_in, group_ends, num_latents);
  c10::cuda::CUDAGuard guard(values_in.device());
  const Tensor values = values_in.contiguous(), indices = indices_in.contiguous();
  const Tensor row_offsets = row_offsets_in.contiguous();
  const auto vdtype = values.scalar_type();
  const auto acc = vdtype == at::kDouble ? at::kDouble : at::kFloat;
  // S arrives either in the values' dtype (the encoder's x) or in the accumulation dtype (decoder suffix sums).
  const Tensor S = (S_in.scalar_type() == vdtype ? S_in : S_in.to(acc)).contiguous();
  const int64_t n = row_offsets.numel() - 1, d = S.size(2), nnz = values.numel(), F = num_latents;
  TORCH_CHECK_VALUE(nnz < INT_MAX && F < INT_MAX && n < INT_MAX, "latent_grad: sizes too large for the CUDA kernels");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto iopts = values.options().dtype(at::kInt);

  // Bucket entries by latent (stable), then segment starts per latent.
  Tensor seg = at::zeros({F + 1}, iopts);
  Tensor perm, row_of;
  if (nnz > 0) {
    row_of = at::full({nnz}, -1, iopts);
    MX_LAUNCH(static_cast<unsigned>(n), 256, 0, stream, rows_of_kernel)(row_offsets.data_ptr<int64_t>(), nnz,
                                                                 row_of.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Tensor keys = at::empty({nnz}, iopts), perm_in = at::empty({nnz}, iopts);
    const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(nnz, 256), 4096));
    MX_LAUNCH(blocks, 256, 0, stream, keys_kernel)(indices.data_ptr<int64_t>(), nnz, F, keys.data_ptr<int>(),
                                            perm_in.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Tensor keys_sorted = at::empty({nnz}, iopts);
    perm = at::empty({nnz}, iopts);
    int end_bit = 1;
    while (end_bit < 31 && (int64_t(1) << end_bit) <= F) ++end_bit;  // enough bits for the sentinel F
    size_t temp_bytes = 0;
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data_ptr<int>(),
                                                   keys_sorted.data_ptr<int>(), perm_in.data_ptr<int>(),
                                                   perm.data_ptr<int>(), static_cast<int>(nnz), 0, end_bit, stream));
    Tensor temp = at::empty({static_cast<int64_t>(temp_bytes) + 1}, values.options().dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, keys.data_ptr<int>(),
                                                   keys_sorted.data_ptr<int>(), perm_in.data_ptr<int>(),
                                                   perm.data_ptr<int>(), static_cast<int>(nnz), 0, end_bit, stream));
    const int sblocks = static_cast<int>(std::min<int64_t>(ceil_div(F + 1, 256), 4096));
    MX_LAUNCH(sblocks, 256, 0, stream, segments_kernel)(keys_sorted.data_ptr<int>(), static_cast<int>(nnz),
                                                 static_cast<int>(F), seg.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    row_of = at::empty({1}, iopts);
    perm = at::empty({1}, iopts);
  }
  const Tensor ends = upload_ends(group_ends, values.device());

  // Write straight into the requested dtype when it is the values' or the accumulation dtype.
  const bool direct = dtype == vdtype || dtype == acc;
  const auto out_dtype = direct ? dtype : acc;
  auto grad = at::empty({F, d}, values.options().dtype(out_dtype));
  auto sums = at::empty({F}, values.options().dtype(out_dtype));
  const dim3 grid(static_cast<unsigned>(ceil_div(F, kWarpsPerBlock)),
                  static_cast<unsigned>(std::max<int64_t>(1, ceil_div(d, kTileCols))));
  TORCH_CHECK(grid.y <= 65535, "latent_grad: d = ", d, " too large for the CUDA kernels");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vdtype, "mx_latent_grad_cuda", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    auto launch = [&](auto s_tag, auto o_tag) {
      using ST = decltype(s_tag);
      using OT = decltype(o_tag);
      constexpr int VEC = 16 / sizeof(ST);
      const bool vec = d % VEC == 0 && aligned16(S.data_ptr()) && aligned16(grad.data_ptr());
      MX_LAUNCH(grid, kWarpsPerBlock * 32, 0, stream, latent_reduce_kernel<T, ST, OT>)(
          S.data_ptr<ST>(), values.data_ptr<T>(), perm.data_ptr<int>(), row_of.data_ptr<int>(), seg.data_ptr<int>(),
          static_cast<int>(nnz), ends.data_ptr<int64_t>(), static_cast<int>(group_ends.size()), n, d,
          static_cast<int>(F), vec, grad.data_ptr<OT>(), sums.data_ptr<OT>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    const bool s_is_t = S.scalar_type() == vdtype, o_is_t = out_dtype == vdtype;
    if constexpr (std::is_same_v<T, A>) {
      launch(T{}, T{});
    } else {
      if (s_is_t && o_is_t)
        launch(T{}, T{});
      else if (s_is_t)
        launch(T{}, A{});
      else if (o_is_t)
        launch(A{}, T{});
      else
        launch(A{}, A{});
    }
  });
  // transposed ([d, F], the encoder weight's layout): one device transpose, cheap next to the reduction.
  if (transposed) grad = grad.t().contiguous();
  if (!direct) return {grad.to(dtype), sums.to(dtype)};
  return {grad, sums};
}

}  // namespace cuda
}  // namespace mx

// Registered from csrc/cuda_dispatch.cpp, which runs the argument checks first.
