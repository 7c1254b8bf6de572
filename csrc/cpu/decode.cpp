// CPU nested-prefix decoding: one sparse pass per row accumulates each group's partial sum, then a running
// sum over groups yields every prefix reconstruction. The MSE variants never build the [m, N, d] output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>


#include "common.h"
#include "cpu/block128.h"
#include "cpu/csr_rows.h"
#include "cpu/reuse.h"

namespace mx {
namespace cpu {
namespace {

// Per-row work shared by all decode kernels: part[g*d : (g+1)*d] = sum of value * W[index] over the row's
// entries in group g, accumulated in acc_t.
// The float path takes 128 columns at a time and keeps them in eight vector registers over a run of entries of
// one group (a row's ids ascend, so each group is one run), where the plain loop loads and stores part for
// every multiply-add. Each run starts from part's current value, so the sums are the same FMAs in the same
// order as the plain loop (which the compiler contracts to FMAs too), whatever the order of the ids.
template <typename T, typename acc_t>
inline void accumulate_groups(const T* v, const int64_t* ix, int64_t e0, int64_t e1, const T* W, int64_t d,
                              const std::vector<int64_t>& ends, acc_t* part) {
  std::fill(part, part + ends.size() * d, acc_t(0));
  int64_t j0 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && std::is_same_v<acc_t, float>) {
    for (; j0 + Block128::kCols <= d; j0 += Block128::kCols) {
      for (int64_t e = e0; e < e1;) {
        const int64_t g = group_of(ix[e], ends), lo = g ? ends[g - 1] : 0, hi = ends[g];
        float* p = part + g * d + j0;
        Block128 sum;
        sum.load(p);
        for (; e < e1 && ix[e] >= lo && ix[e] < hi; ++e)
          if (v[e] != 0.0f) sum.fma(v[e], W + ix[e] * d + j0);
        sum.store(p);
      }
    }
  }
#endif
  if (j0 == d) return;
  for (int64_t e = e0; e < e1; ++e) {
    const acc_t a = static_cast<acc_t>(v[e]);
    if (a == acc_t(0)) continue;
    acc_t* p = part + group_of(ix[e], ends) * d;
    const T* w = W + ix[e] * d;
    for (int64_t j = j0; j < d; ++j) p[j] += a * static_cast<acc_t>(w[j]);
  }
}

// sum_j w[j] * s[j] with kLanes independent partial sums: a single running sum is a serial dependency chain
// the compiler may not reorder (no -ffast-math), so it would neither vectorise nor pipeline; fixed lanes do
// both and keep the summation order, hence the result, identical run to run.
constexpr int64_t kLanes = 16;
template <typename T, typename acc_t>
inline acc_t lane_dot(const T* w, const acc_t* s, int64_t d) {
  acc_t lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int64_t t = 0; t < kLanes; ++t) lane[t] += static_cast<acc_t>(w[j + t]) * s[j + t];
  acc_t dot = 0;
  for (; j < d; ++j) dot += static_cast<acc_t>(w[j]) * s[j];
  for (int64_t t = 0; t < kLanes; ++t) dot += lane[t];
  return dot;
}

// Starts `run` at the bias (or zero) for the running sum over groups.
template <typename T, typename acc_t>
inline void init_running(const T* bias, int64_t d, acc_t* run) {
  for (int64_t j = 0; j < d; ++j) run[j] = bias ? static_cast<acc_t>(bias[j]) : acc_t(0);
}

struct Rows {
  Tensor values, indices, row_offsets, W;
  std::vector<int64_t> ends;
  int64_t n, d;
};

Rows prepare(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
             IntArrayRef group_ends) {
  Rows r{values.contiguous(), indices.contiguous(), row_offsets.contiguous(), W.contiguous(),
         std::vector<int64_t>(group_ends.begin(), group_ends.end()), row_offsets.numel() - 1, W.size(1)};
  check_csr_content(r.indices, r.row_offsets, W.size(0));
  return r;
}

}  // namespace

Tensor nested_decode(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                     const c10::optional<Tensor>& bias, IntArrayRef group_ends) {
  check_decode_args(values, indices, row_offsets, W, bias, group_ends);
  Rows R = prepare(values, indices, row_offsets, W, group_ends);
  const int64_t m = R.ends.size(), n = R.n, d = R.d;
  const Tensor b = bias.has_value() ? bias->contiguous() : Tensor();
  auto out = at::empty({m, n, d}, W.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "nested_decode", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    const int64_t* ro = R.row_offsets.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> part(m * d), run(d);
      for (int64_t r = r0; r < r1; ++r) {
        accumulate_groups(R.values.data_ptr<scalar_t>(), R.indices.data_ptr<int64_t>(), ro[r], ro[r + 1],
                          R.W.data_ptr<scalar_t>(), d, R.ends, part.data());
        init_running(bp, d, run.data());
        for (int64_t g = 0; g < m; ++g) {
          scalar_t* dst = o + (g * n + r) * d;
          for (int64_t j = 0; j < d; ++j) dst[j] = static_cast<scalar_t>(run[j] += part[g * d + j]);
        }
      }
    });
  });
  return out;
}

Tensor nested_mse(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                  const Tensor& bias, const Tensor& target, IntArrayRef group_ends) {
  check_mse_args(values, indices, row_offsets, W, bias, target, group_ends);
  Rows R = prepare(values, indices, row_offsets, W, group_ends);
  const int64_t m = R.ends.size(), n = R.n, d = R.d;
  const Tensor b = bias.contiguous(), y = target.contiguous();
  const auto acc_type = W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Row losses are summed in a fixed order afterwards, so the result does not depend on the thread count.
  std::vector<double> row_loss(m * n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "nested_mse", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* ro = R.row_offsets.data_ptr<int64_t>();
    const Tensor yc = y.scalar_type() == acc_type ? y : y.to(acc_type);
    const acc_t* yp = yc.data_ptr<acc_t>();
    at::parallel_for(0, n, 4, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> part(m * d), run(d);
      for (int64_t r = r0; r < r1; ++r) {
        accumulate_groups(R.values.data_ptr<scalar_t>(), R.indices.data_ptr<int64_t>(), ro[r], ro[r + 1],
                          R.W.data_ptr<scalar_t>(), d, R.ends, part.data());
        init_running(b.data_ptr<scalar_t>(), d, run.data());
        for (int64_t g = 0; g < m; ++g) {
          acc_t s = 0;
          for (int64_t j = 0; j < d; ++j) {
            run[j] += part[g * d + j];
            const acc_t diff = run[j] - yp[r * d + j];
            s += diff * diff;
          }
          row_loss[g * n + r] = s;
        }
      }
    });
  });
  auto loss = at::empty({m}, W.options().dtype(acc_type));
  std::vector<double> tot(m, 0.0);
  for (int64_t g = 0; g < m; ++g) {
    for (int64_t r = 0; r < n; ++r) tot[g] += row_loss[g * n + r];
  }
  for (int64_t g = 0; g < m; ++g) {
    if (acc_type == at::kDouble)
      loss.data_ptr<double>()[g] = tot[g] / double(n * d);
    else
      loss.data_ptr<float>()[g] = static_cast<float>(tot[g] / double(n * d));
  }
  return loss;
}

// S [m, N, d] (suffix sums of dL/dr_g, see nested_mse_backward) and, when with_dots, grouped_dot's grad_values
// [nnz] computed in the same row pass: each entry's W row was gathered for the row's decode moments before and is
// still in cache, so the dots cost no second gather pass over W. Same lane_dot on the same S values as
// grouped_dot, so both routes give the same bits.
std::tuple<Tensor, Tensor> mse_backward(const Tensor& grad_loss, const Tensor& values, const Tensor& indices,
                                        const Tensor& row_offsets, const Tensor& W, const Tensor& bias,
                                        const Tensor& target, IntArrayRef group_ends, bool with_dots) {
  check_mse_args(values, indices, row_offsets, W, bias, target, group_ends);
  Rows R = prepare(values, indices, row_offsets, W, group_ends);
  const int64_t m = R.ends.size(), n = R.n, d = R.d;
  check_grad_loss(grad_loss, W, m);
  const auto acc_type = W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor b = bias.contiguous(), yc = target.to(acc_type).contiguous();
  const Tensor gl = grad_loss.to(at::kCPU).to(acc_type).contiguous();
  thread_local std::vector<Tensor> S_pool;  // S is consumed by the same backward: reused next step
  auto S = reusable_empty(S_pool, {m, n, d}, W.options().dtype(acc_type));
  Tensor dots = with_dots ? at::empty({R.indices.numel()}, W.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "nested_mse_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* ro = R.row_offsets.data_ptr<int64_t>();
    const int64_t* ix = R.indices.data_ptr<int64_t>();
    const scalar_t* Wp = R.W.data_ptr<scalar_t>();
    const acc_t* yp = yc.data_ptr<acc_t>();
    std::vector<acc_t> coef(m);
    for (int64_t g = 0; g < m; ++g) coef[g] = acc_t(2) * gl.data_ptr<acc_t>()[g] / acc_t(n * d);
    acc_t* Sp = S.data_ptr<acc_t>();
    scalar_t* o = with_dots ? dots.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n, 4, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> part(m * d), run(d);
      for (int64_t r = r0; r < r1; ++r) {
        accumulate_groups(R.values.data_ptr<scalar_t>(), ix, ro[r], ro[r + 1], Wp, d, R.ends, part.data());
        init_running(b.data_ptr<scalar_t>(), d, run.data());
        // Walk the prefixes from the last: S[g] = coef[g] * (r_g - y) + S[g + 1]; r_g = run minus later parts.
        for (int64_t g = 0; g < m; ++g)
          for (int64_t j = 0; j < d; ++j) run[j] += part[g * d + j];
        for (int64_t g = m - 1; g >= 0; --g) {
          acc_t* dst = Sp + (g * n + r) * d;
          const acc_t* next = g + 1 < m ? Sp + ((g + 1) * n + r) * d : nullptr;
          for (int64_t j = 0; j < d; ++j) {
            dst[j] = coef[g] * (run[j] - yp[r * d + j]) + (next ? next[j] : acc_t(0));
            run[j] -= part[g * d + j];
          }
        }
        if (o)
          for (int64_t e = ro[r]; e < ro[r + 1]; ++e)
            o[e] = static_cast<scalar_t>(lane_dot(Wp + ix[e] * d, Sp + (group_of(ix[e], R.ends) * n + r) * d, d));
      }
    });
  });
  return {S, dots};
}

Tensor nested_mse_backward(const Tensor& grad_loss, const Tensor& values, const Tensor& indices,
                           const Tensor& row_offsets, const Tensor& W, const Tensor& bias, const Tensor& target,
                           IntArrayRef group_ends) {
  return std::get<0>(mse_backward(grad_loss, values, indices, row_offsets, W, bias, target, group_ends, false));
}

std::tuple<Tensor, Tensor> nested_mse_backward_dot(const Tensor& grad_loss, const Tensor& values,
                                                   const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                                                   const Tensor& bias, const Tensor& target, IntArrayRef group_ends) {
  return mse_backward(grad_loss, values, indices, row_offsets, W, bias, target, group_ends, true);
}

Tensor grouped_dot(const Tensor& S_in, const Tensor& indices_in, const Tensor& row_offsets_in, const Tensor& W_in,
                   IntArrayRef group_ends) {
  check_grouped_dot_args(S_in, indices_in, row_offsets_in, W_in, group_ends);
  const Tensor indices = indices_in.contiguous(), row_offsets = row_offsets_in.contiguous();
  const Tensor W = W_in.contiguous();
  check_csr_content(indices, row_offsets, W.size(0));
  const auto acc_type = W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor S = S_in.to(acc_type).contiguous();
  const std::vector<int64_t> ends(group_ends.begin(), group_ends.end());
  const int64_t n = row_offsets.numel() - 1, d = W.size(1);
  auto out = at::empty({indices.numel()}, W.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "grouped_dot", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t* ro = row_offsets.data_ptr<int64_t>();
    const int64_t* ix = indices.data_ptr<int64_t>();
    const acc_t* Sp = S.data_ptr<acc_t>();
    const scalar_t* Wp = W.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t e = ro[r]; e < ro[r + 1]; ++e) {
          const acc_t* s = Sp + (group_of(ix[e], ends) * n + r) * d;
          const scalar_t* w = Wp + ix[e] * d;
          o[e] = static_cast<scalar_t>(lane_dot(w, s, d));
        }
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace mx

TORCH_LIBRARY_IMPL(matryoshka_ext, CPU, m) {
  m.impl("nested_decode", &mx::cpu::nested_decode);
  m.impl("nested_mse", &mx::cpu::nested_mse);
  m.impl("nested_mse_backward", &mx::cpu::nested_mse_backward);
  m.impl("grouped_dot", &mx::cpu::grouped_dot);
  m.impl("nested_mse_backward_dot", &mx::cpu::nested_mse_backward_dot);
}
