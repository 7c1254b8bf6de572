// CUDA nested-prefix decoding and its backward helpers. One block per (row, column tile): each thread owns VEC
// consecutive columns, walks the row's entries once and emits every prefix at its group boundary (running sum
// over groups, as on the CPU). nested_mse keeps per-(prefix, row, tile) losses and reduces them in a fixed
// order: no [m, N, d] output, no float atomics. grouped_dot: one warp per entry, the row's S reused from L1.
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

enum Mode { kDecode = 0, kMse = 1, kMseBackward = 2 };

constexpr int kChunk = 256;         // entries staged in shared memory at a time
constexpr int kMaxThreads = 256;    // per block; tiles of kMaxThreads * VEC columns at most
constexpr int kBufBytes = 40 << 10;  // shared buffer for the backward's per-prefix terms when it fits

template <typename T>
struct RowsArgs {
  using A = at::opmath_type<T>;
  const T* values;
  const int64_t* indices;
  const int64_t* row_offsets;
  int64_t nnz;
  const T* W;
  int64_t F, d, n;
  const T* bias;  // may be null (decode)
  const int64_t* ends;
  int m;
  int cols_tile, ntile;
  bool vec;  // every row pointer used below is 16-byte aligned and d % VEC == 0
  T* out;          // decode: [m, n, d]
  const void* y;   // mse / backward: [n, d] in T, or in A when y_is_acc
  bool y_is_acc;
  A* partial;           // mse: [m, n, ntile] per-tile squared errors
  const A* grad_loss;   // backward: [m]
  A* S;                 // backward: [m, n, d]
  bool smem_buf;        // backward: per-prefix terms in shared memory (else staged in S itself)
};

template <typename T, int VEC, int MODE>
__global__ void nested_rows_kernel(const RowsArgs<T> a) {
  using A = at::opmath_type<T>;
  __shared__ int s_idx[kChunk];
  __shared__ int s_grp[kChunk];
  __shared__ A s_val[kChunk];
  __shared__ A s_red[32];
  MX_DYNAMIC_SMEM(dyn_smem);  // backward: per-prefix terms when they fit (smem_buf)

  const int64_t r = blockIdx.x;
  const int tile = blockIdx.y;
  const int c_local = threadIdx.x * VEC;
  const int64_t col = int64_t(tile) * a.cols_tile + c_local;
  int nv = 0;
  if (c_local < a.cols_tile && col < a.d) nv = static_cast<int>(min(int64_t(VEC), a.d - col));
  const bool vec = a.vec;

  int64_t e0, e1;
  row_range(a.row_offsets, r, a.nnz, e0, e1);

  A run[VEC], acc[VEC], yv[VEC];
#pragma unroll
  for (int q = 0; q < VEC; ++q) run[q] = acc[q] = yv[q] = A(0);
  if (a.bias != nullptr && nv > 0) load_cvt<VEC>(a.bias + col, nv, vec, run);
  if (MODE != kDecode && nv > 0) {
    if (a.y_is_acc)
      load_cvt<VEC>(static_cast<const A*>(a.y) + r * a.d + col, nv, vec, yv);
    else
      load_cvt<VEC>(static_cast<const T*>(a.y) + r * a.d + col, nv, vec, yv);
  }
  A* sbuf = reinterpret_cast<A*>(dyn_smem);

  // Emits prefix g (the running sum now holds bias + groups 0..g). Reached uniformly by the whole block.
  auto emit = [&](int g) {
    if (MODE == kDecode) {
      if (nv > 0) store_cvt<VEC>(a.out + (int64_t(g) * a.n + r) * a.d + col, nv, vec, run);
    } else if (MODE == kMse) {
      A s = A(0);
#pragma unroll
      for (int q = 0; q < VEC; ++q) {
        const A diff = run[q] - yv[q];
        if (q < nv) s = fma_acc(diff, diff, s);
      }
      s = block_sum(s, s_red);
      if (threadIdx.x == 0) a.partial[(int64_t(g) * a.n + r) * a.ntile + tile] = s;
    } else {
      const A coef = A(2) * a.grad_loss[g] / A(a.n * a.d);
      A c[VEC];
#pragma unroll
      for (int q = 0; q < VEC; ++q) c[q] = coef * (run[q] - yv[q]);
      if (nv > 0) {
        if (a.smem_buf) {
#pragma unroll
          for (int q = 0; q < VEC; ++q) sbuf[g * a.cols_tile + c_local + q] = c[q];
        } else {
          store_cvt<VEC>(a.S + (int64_t(g) * a.n + r) * a.d + col, nv, vec, c);
        }
      }
    }
  };
  auto flush = [&](int g) {
#pragma unroll
    for (int q = 0; q < VEC; ++q) {
      run[q] += acc[q];
      acc[q] = A(0);
    }
    emit(g);
  };
  auto add = [&](int j) {
    A w[VEC];
    load_cvt<VEC>(a.W + int64_t(s_idx[j]) * a.d + col, nv, vec, w);
    const A v = s_val[j];
#pragma unroll
    for (int q = 0; q < VEC; ++q) acc[q] = fma_acc(v, w[q], acc[q]);
  };
  auto load_chunk = [&](int64_t c0) {
    const int len = static_cast<int>(min(int64_t(kChunk), e1 - c0));
    __syncthreads();
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
      const int64_t i = a.indices[c0 + j];
      const A v = static_cast<A>(a.values[c0 + j]);
      const bool ok = i >= 0 && i < a.F;
      s_idx[j] = ok ? static_cast<int>(i) : 0;
      s_val[j] = v;
      // Zero values are skipped, as on the CPU (0 * inf would otherwise poison the sum).
      s_grp[j] = ok && v != A(0) ? group_of(i, a.ends, a.m) : -1;
    }
    __syncthreads();
    return len;
  };

  // Ascending indices (the normal case) mean non-decreasing groups: one pass, flushing at group changes.
  // Anything else (hand-made CSR, bad indices) takes one pass per group. Both add each group's entries in entry
  // order into a fresh partial, so they produce identical numbers.
  bool bad = false;
  for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
    const int64_t i = a.indices[e];
    bad |= i < 0 || i >= a.F || (e > e0 && a.indices[e - 1] > i);
  }
  const bool sorted = !__syncthreads_or(bad);

  if (sorted) {
    int cur = 0;
    for (int64_t c0 = e0; c0 < e1; c0 += kChunk) {
      const int len = load_chunk(c0);
      int j = 0;
      while (j < len) {
        const int g = s_grp[j];
        if (g < 0) {
          ++j;
          continue;
        }
        while (cur < g) flush(cur++);
        if (j + 4 <= len && s_grp[j + 1] == g && s_grp[j + 2] == g && s_grp[j + 3] == g) {
          // Four loads in flight, then the adds in entry order.
          A w0[VEC], w1[VEC], w2[VEC], w3[VEC];
          load_cvt<VEC>(a.W + int64_t(s_idx[j]) * a.d + col, nv, vec, w0);
          load_cvt<VEC>(a.W + int64_t(s_idx[j + 1]) * a.d + col, nv, vec, w1);
          load_cvt<VEC>(a.W + int64_t(s_idx[j + 2]) * a.d + col, nv, vec, w2);
          load_cvt<VEC>(a.W + int64_t(s_idx[j + 3]) * a.d + col, nv, vec, w3);
          const A v0 = s_val[j], v1 = s_val[j + 1], v2 = s_val[j + 2], v3 = s_val[j + 3];
#pragma unroll
          for (int q = 0; q < VEC; ++q) {
            acc[q] = fma_acc(v0, w0[q], acc[q]);
            acc[q] = fma_acc(v1, w1[q], acc[q]);
            acc[q] = fma_acc(v2, w2[q], acc[q]);
            acc[q] = fma_acc(v3, w3[q], acc[q]);
          }
          j += 4;
        } else {
          add(j);
          ++j;
        }
      }
    }
    while (cur < a.m) flush(cur++);
  } else {
    const bool one_chunk = e1 - e0 <= kChunk;
    if (one_chunk) load_chunk(e0);
    for (int g = 0; g < a.m; ++g) {
      for (int64_t c0 = e0; c0 < e1; c0 += kChunk) {
        const int len = one_chunk ? static_cast<int>(e1 - e0) : load_chunk(c0);
        for (int j = 0; j < len; ++j)
          if (s_grp[j] == g) add(j);
      }
      flush(g);
    }
  }

  if (MODE == kMseBackward && nv > 0) {
    // Suffix sums over prefixes: S[g] = term[g] + S[g + 1]. Each thread touches only its own columns.
    A s[VEC];
#pragma unroll
    for (int q = 0; q < VEC; ++q) s[q] = A(0);
    for (int g = a.m - 1; g >= 0; --g) {
      A* dst = a.S + (int64_t(g) * a.n + r) * a.d + col;
      A t[VEC];
      if (a.smem_buf) {
#pragma unroll
        for (int q = 0; q < VEC; ++q) t[q] = sbuf[g * a.cols_tile + c_local + q];
      } else {
        load_cvt<VEC>(static_cast<const A*>(dst), nv, vec, t);
      }
#pragma unroll
      for (int q = 0; q < VEC; ++q) s[q] = t[q] + s[q];
      store_cvt<VEC>(dst, nv, vec, s);
    }
  }
}

// loss[g] = sum over rows and tiles (fixed order, double) / (n * d).
template <typename A, int THREADS>
__global__ void __launch_bounds__(THREADS)
    mse_reduce_kernel(const A* __restrict__ partial, int64_t per_prefix, double denom, A* __restrict__ loss) {
  __shared__ double scratch[32];
  const int g = blockIdx.x;
  const A* p = partial + int64_t(g) * per_prefix;
  double s = 0;
  for (int64_t i = threadIdx.x; i < per_prefix; i += THREADS) s += static_cast<double>(p[i]);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) loss[g] = static_cast<A>(s / denom);
}

// grad_values[e] = <W[idx_e], S[group(idx_e), row_e]>: one block per row, one warp per entry.
template <typename T, int VEC>
__global__ void __launch_bounds__(256)
    grouped_dot_kernel(const at::opmath_type<T>* __restrict__ S, const int64_t* __restrict__ indices,
                       const int64_t* __restrict__ row_offsets, int64_t nnz, const T* __restrict__ W, int64_t F,
                       int64_t d, int64_t n, const int64_t* __restrict__ ends, int m, bool vec, T* __restrict__ out) {
  using A = at::opmath_type<T>;
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  int64_t e0, e1;
  row_range(row_offsets, r, nnz, e0, e1);
  for (int64_t e = e0 + warp; e < e1; e += nwarps) {
    const int64_t i = indices[e];
    if (i < 0 || i >= F) {
      if (lane == 0) out[e] = T(0);
      continue;
    }
    const A* srow = S + (int64_t(group_of(i, ends, m)) * n + r) * d;
    const T* wrow = W + i * d;
    A dot = A(0);
#pragma unroll 2
    for (int64_t c = int64_t(lane) * VEC; c < d; c += 32 * VEC) {
      const int nv = static_cast<int>(min(int64_t(VEC), d - c));
      A w[VEC], s[VEC];
      load_cvt<VEC>(wrow + c, nv, vec, w);
      load_cvt<VEC>(srow + c, nv, vec, s);
#pragma unroll
      for (int q = 0; q < VEC; ++q) dot = fma_acc(w[q], s[q], dot);
    }
    dot = warp_sum(dot);
    if (lane == 0) out[e] = static_cast<T>(dot);
  }
}

at::ScalarType acc_type_of(const Tensor& W) { return W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Launches nested_rows_kernel for one mode; fills the args common to every mode.
template <int MODE>
void launch_rows(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                 const Tensor& bias, const Tensor& y, const Tensor& grad_loss, IntArrayRef group_ends,
                 const Tensor& out, const Tensor& partial_or_S, int ntile_expected) {
  const int64_t n = row_offsets.numel() - 1, d = W.size(1);
  const int m = static_cast<int>(group_ends.size());
  const Tensor ends = upload_ends(group_ends, W.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "mx_nested_rows_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int VEC = 16 / sizeof(scalar_t);
    const ColTiles tl = col_tiles(d, VEC, kMaxThreads);
    TORCH_INTERNAL_ASSERT(ntile_expected < 0 || ntile_expected == tl.ntile);
    RowsArgs<scalar_t> a{};
    a.values = values.data_ptr<scalar_t>();
    a.indices = indices.data_ptr<int64_t>();
    a.row_offsets = row_offsets.data_ptr<int64_t>();
    a.nnz = values.numel();
    a.W = W.data_ptr<scalar_t>();
    a.F = W.size(0);
    a.d = d;
    a.n = n;
    a.bias = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    a.ends = ends.data_ptr<int64_t>();
    a.m = m;
    a.cols_tile = tl.cols;
    a.ntile = tl.ntile;
    bool vec = d % VEC == 0 && aligned16(a.W) && (a.bias == nullptr || aligned16(a.bias));
    if (y.defined()) {
      a.y = y.data_ptr();
      a.y_is_acc = y.scalar_type() != W.scalar_type();
      vec = vec && aligned16(a.y);
    }
    size_t smem = 0;
    if (MODE == kDecode) {
      a.out = out.data_ptr<scalar_t>();
      vec = vec && aligned16(a.out);
    } else if (MODE == kMse) {
      a.partial = partial_or_S.data_ptr<A>();
    } else {
      a.grad_loss = grad_loss.data_ptr<A>();
      a.S = partial_or_S.data_ptr<A>();
      vec = vec && aligned16(a.S);
      const size_t bytes = size_t(m) * tl.cols * sizeof(A);
      a.smem_buf = bytes <= size_t(kBufBytes);
      smem = a.smem_buf ? bytes : 0;
    }
    a.vec = vec;
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(tl.ntile));
    MX_LAUNCH(grid, tl.threads, smem, stream, nested_rows_kernel<scalar_t, VEC, MODE>)(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

struct Prepared {
  Tensor values, indices, row_offsets, W;
};

Prepared prepare(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W) {
  const int64_t n = row_offsets.numel() - 1;
  TORCH_CHECK_VALUE(n < INT_MAX && W.size(0) < INT_MAX, "shapes too large for the CUDA kernels");
  return {values.contiguous(), indices.contiguous(), row_offsets.contiguous(), W.contiguous()};
}

int ntile_of(const Tensor& W) {
  const int vec = 16 / static_cast<int>(W.element_size());
  return col_tiles(W.size(1), vec, kMaxThreads).ntile;
}

}  // namespace

Tensor nested_decode(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                     const c10::optional<Tensor>& bias, IntArrayRef group_ends) {
  check_decode_args(values, indices, row_offsets, W, bias, group_ends);
  c10::cuda::CUDAGuard guard(W.device());
  const Prepared P = prepare(values, indices, row_offsets, W);
  const int64_t m = group_ends.size(), n = row_offsets.numel() - 1, d = W.size(1);
  const Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
  auto out = at::empty({m, n, d}, W.options());
  launch_rows<kDecode>(P.values, P.indices, P.row_offsets, P.W, b, Tensor(), Tensor(), group_ends, out, Tensor(), -1);
  return out;
}

Tensor nested_mse(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                  const Tensor& bias, const Tensor& target, IntArrayRef group_ends) {
  check_mse_args(values, indices, row_offsets, W, bias, target, group_ends);
  c10::cuda::CUDAGuard guard(W.device());
  const Prepared P = prepare(values, indices, row_offsets, W);
  const int64_t m = group_ends.size(), n = row_offsets.numel() - 1, d = W.size(1);
  const auto acc = acc_type_of(W);
  // Target in W's dtype is read as is; any other dtype goes through the accumulation dtype (as on the CPU).
  const Tensor y = (target.scalar_type() == W.scalar_type() ? target : target.to(acc)).contiguous();
  const int ntile = ntile_of(W);
  auto partial = at::empty({m, n, ntile}, W.options().dtype(acc));
  launch_rows<kMse>(P.values, P.indices, P.row_offsets, P.W, bias.contiguous(), y, Tensor(), group_ends, Tensor(),
                    partial, ntile);
  auto loss = at::empty({m}, W.options().dtype(acc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "mx_mse_reduce_cuda", [&] {
    MX_LAUNCH(static_cast<unsigned>(m), 256, 0, stream, mse_reduce_kernel<scalar_t, 256>)(
        partial.data_ptr<scalar_t>(), n * ntile, double(n) * double(d), loss.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return loss;
}

Tensor nested_mse_backward(const Tensor& grad_loss, const Tensor& values, const Tensor& indices,
                           const Tensor& row_offsets, const Tensor& W, const Tensor& bias, const Tensor& target,
                           IntArrayRef group_ends) {
  check_mse_args(values, indices, row_offsets, W, bias, target, group_ends);
  const int64_t m = group_ends.size(), n = row_offsets.numel() - 1, d = W.size(1);
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == m, "grad_loss must have shape [", m, "], got ",
                    grad_loss.sizes());
  c10::cuda::CUDAGuard guard(W.device());
  const Prepared P = prepare(values, indices, row_offsets, W);
  const auto acc = acc_type_of(W);
  const Tensor y = (target.scalar_type() == W.scalar_type() ? target : target.to(acc)).contiguous();
  const Tensor gl = grad_loss.to(W.device(), acc).contiguous();
  auto S = at::empty({m, n, d}, W.options().dtype(acc));
  launch_rows<kMseBackward>(P.values, P.indices, P.row_offsets, P.W, bias.contiguous(), y, gl, group_ends, Tensor(),
                            S, -1);
  return S;
}

Tensor grouped_dot(const Tensor& S_in, const Tensor& indices_in, const Tensor& row_offsets_in, const Tensor& W_in,
                   IntArrayRef group_ends) {
  check_grouped_dot_args(S_in, indices_in, row_offsets_in, W_in, group_ends);
  c10::cuda::CUDAGuard guard(W_in.device());
  const Tensor indices = indices_in.contiguous(), row_offsets = row_offsets_in.contiguous();
  const Tensor W = W_in.contiguous();
  const Tensor S = S_in.to(acc_type_of(W)).contiguous();
  const int64_t n = row_offsets.numel() - 1, d = W.size(1), nnz = indices.numel();
  TORCH_CHECK_VALUE(n < INT_MAX, "too many rows for the CUDA kernels");
  auto out = at::zeros({nnz}, W.options());  // entries outside every row stay 0
  if (nnz == 0) return out;
  const Tensor ends = upload_ends(group_ends, W.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "mx_grouped_dot_cuda", [&] {
    constexpr int VEC = 16 / sizeof(scalar_t);
    const bool vec = d % VEC == 0 && aligned16(W.data_ptr()) && aligned16(S.data_ptr());
    MX_LAUNCH(static_cast<unsigned>(n), 256, 0, stream, grouped_dot_kernel<scalar_t, VEC>)(
        S.data_ptr<at::opmath_type<scalar_t>>(), indices.data_ptr<int64_t>(), row_offsets.data_ptr<int64_t>(), nnz,
        W.data_ptr<scalar_t>(), W.size(0), d, n, ends.data_ptr<int64_t>(), static_cast<int>(group_ends.size()), vec,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace mx

// Registered from csrc/cuda_dispatch.cpp, which runs the argument checks first.
