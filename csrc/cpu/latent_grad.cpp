// CPU latent-major weight gradient: entries are bucketed by latent (counting sort, stable), then each latent's
// row of the gradient is reduced by one thread in entry order — deterministic for any thread count, no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "cpu/block128.h"
#include "cpu/csr_rows.h"
#include "cpu/reuse.h"

namespace mx {
namespace cpu {
namespace {

// out[0..d) = sum over the c entries (in order) of val[q] * S[row[q]], entries holding 0 skipped. The float path
// keeps 128 columns of the sum in eight vector registers across all entries, so the only memory traffic is the
// S rows: a sum kept in memory costs a load and a store per multiply-add. Same multiply-adds in the same entry
// order as the plain loop (which the compiler contracts to FMAs too).
template <typename acc_t, typename S_t>
void reduce_rows(const acc_t* val, const int64_t* row, int64_t c, const S_t* S, int64_t d, acc_t* out) {
  int64_t j0 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<S_t, float>) {
    for (; j0 + Block128::kCols <= d; j0 += Block128::kCols) {
      Block128 sum;
      sum.zero();
      for (int64_t q = 0; q < c; ++q)
        if (val[q] != 0.0f) sum.fma(val[q], S + row[q] * d + j0);
      sum.store(out + j0);
    }
  }
#endif
  std::fill(out + j0, out + d, acc_t(0));
  for (int64_t q = 0; q < c; ++q) {
    const acc_t a = val[q];
    if (a == acc_t(0)) continue;
    const S_t* s = S + row[q] * d;
    for (int64_t j = j0; j < d; ++j) out[j] += a * static_cast<acc_t>(s[j]);
  }
}

template <typename T, typename S_t>
void reduce_latents(const T* v, const int64_t* ix, const int64_t* ro, const S_t* S, const std::vector<int64_t>& ends,
                    int64_t n, int64_t nnz, int64_t num_latents, int64_t d, bool transposed,
                    at::opmath_type<T>* grad, at::opmath_type<T>* sums) {
  using acc_t = at::opmath_type<T>;
  // Entries sorted by latent (a stable counting sort: within a latent they keep their order), each carrying its
  // value (in acc_t) and row, so the reduction below reads them in sequence instead of through an order[] table
  // (two random reads per entry). The nnz-long arrays are per-thread scratch kept across calls: fresh ones cost
  // a page fault per 4 KiB (tens of MB at AuxK's N * aux_k entries) and a zero-fill.
  thread_local std::vector<Tensor> scratch;
  const auto cpu = at::TensorOptions().device(at::kCPU);
  const Tensor val_t = reusable_empty(scratch, {nnz}, cpu.dtype(c10::CppTypeToScalarType<acc_t>::value));
  const Tensor row_t = reusable_empty(scratch, {nnz}, cpu.dtype(at::kLong));
  acc_t* val = val_t.data_ptr<acc_t>();
  int64_t* row = row_t.data_ptr<int64_t>();
  std::vector<int64_t> start(num_latents + 1, 0);
  for (int64_t e = 0; e < nnz; ++e) ++start[ix[e] + 1];
  for (int64_t f = 0; f < num_latents; ++f) start[f + 1] += start[f];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t e = ro[r]; e < ro[r + 1]; ++e) {
        const int64_t q = fill[ix[e]]++;
        val[q] = static_cast<acc_t>(v[e]);
        row[q] = r;
      }
  }
  // transposed: grad is [d, F] (the encoder weight's own layout). Latents are reduced in tiles of kTile rows,
  // then written column-wise, kTile consecutive floats (a cache line) per output row.
  constexpr int64_t kTile = 16;
  at::parallel_for(0, num_latents, kTile, [&](int64_t f0, int64_t f1) {
    std::vector<acc_t> tile(transposed ? kTile * d : 0);
    for (int64_t f = f0; f < f1; ++f) {
      acc_t* out = transposed ? tile.data() + ((f - f0) % kTile) * d : grad + f * d;
      const int64_t g = group_of(f, ends);
      acc_t total = 0;
      for (int64_t q = start[f]; q < start[f + 1]; ++q) total += val[q];
      sums[f] = total;
      reduce_rows(val + start[f], row + start[f], start[f + 1] - start[f], S + g * n * d, d, out);
      const int64_t t0 = f - (f - f0) % kTile;  // first latent of this tile
      if (transposed && (f + 1 == f1 || f + 1 - t0 == kTile)) {
        const int64_t rows = f + 1 - t0;
        for (int64_t j = 0; j < d; ++j)
          for (int64_t q = 0; q < rows; ++q) grad[j * num_latents + t0 + q] = tile[q * d + j];
      }
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor> latent_grad(const Tensor& S_in, const Tensor& values_in, const Tensor& indices_in,
                                       const Tensor& row_offsets_in, IntArrayRef group_ends, int64_t num_latents,
                                       at::ScalarType dtype, bool transposed) {
  check_latent_grad_args(S_in, values_in, indices_in, row_offsets_in, group_ends, num_latents);
  check_float_dtype(dtype, "dtype");
  const Tensor values = values_in.contiguous(), indices = indices_in.contiguous();
  const Tensor row_offsets = row_offsets_in.contiguous();
  check_csr_content(indices, row_offsets, num_latents);
  const auto acc_type = values.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // S arrives either in the values' dtype (the encoder's x) or in the accumulation dtype (decoder suffix sums).
  const Tensor S = (S_in.scalar_type() == values.scalar_type() ? S_in : S_in.to(acc_type)).contiguous();
  const std::vector<int64_t> ends(group_ends.begin(), group_ends.end());
  const int64_t n = row_offsets.numel() - 1, d = S.size(2), nnz = values.numel();
  // a weight gradient lives until the optimiser step has read it; the next step's reuses its buffer
  thread_local std::vector<Tensor> grad_pool;
  const auto gopt = values.options().dtype(acc_type);
  auto grad = transposed ? reusable_empty(grad_pool, {d, num_latents}, gopt)
                         : reusable_empty(grad_pool, {num_latents, d}, gopt);
  auto sums = at::empty({num_latents}, values.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "latent_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* v = values.data_ptr<scalar_t>();
    const auto* ix = indices.data_ptr<int64_t>();
    const auto* ro = row_offsets.data_ptr<int64_t>();
    if (S.scalar_type() == values.scalar_type())
      reduce_latents(v, ix, ro, S.data_ptr<scalar_t>(), ends, n, nnz, num_latents, d, transposed, grad.data_ptr<acc_t>(),
                     sums.data_ptr<acc_t>());
    else
      reduce_latents(v, ix, ro, S.data_ptr<acc_t>(), ends, n, nnz, num_latents, d, transposed, grad.data_ptr<acc_t>(),
                     sums.data_ptr<acc_t>());
  });
  return {grad.to(dtype), sums.to(dtype)};
}

}  // namespace cpu
}  // namespace mx

TORCH_LIBRARY_IMPL(matryoshka_ext, CPU, m) { m.impl("latent_grad", &mx::cpu::latent_grad); }
