// CUDA registrations. Every argument check runs here, in a host-compiler translation unit, before control enters
// nvcc-compiled code: on the GPU box (torch 2.11) an exception unwinding through nvcc-compiled host frames
// crashed the process (seen as a segfault on `topk(pre, k=0)`), so nothing may throw from csrc/cuda/.
#ifdef MX_WITH_CUDA
#include <ATen/ATen.h>
#include <torch/library.h>

#include <climits>

#include "common.h"

namespace mx {
namespace cuda_entry {
namespace {

void check_int_sizes(std::initializer_list<int64_t> sizes, const char* what) {
  for (int64_t s : sizes) TORCH_CHECK_VALUE(s < INT_MAX, what, ": sizes too large for the CUDA kernels");
}

Csr topk_select(const Tensor& pre, int64_t k) {
  const auto nf = check_select(pre, k);
  check_int_sizes({nf.first, nf.second}, "pre");
  return cuda::topk_select(pre, k);
}

Csr batch_topk_select(const Tensor& pre, int64_t k) {
  const auto nf = check_select(pre, k);
  check_int_sizes({nf.first, nf.second}, "pre");
  return cuda::batch_topk_select(pre, k);
}

Tensor nested_decode(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                     const c10::optional<Tensor>& bias, IntArrayRef group_ends) {
  check_decode_args(values, indices, row_offsets, W, bias, group_ends);
  check_int_sizes({row_offsets.numel(), W.size(0), values.numel()}, "nested_decode");
  return cuda::nested_decode(values, indices, row_offsets, W, bias, group_ends);
}

Tensor nested_mse(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                  const Tensor& bias, const Tensor& target, IntArrayRef group_ends) {
  check_mse_args(values, indices, row_offsets, W, bias, target, group_ends);
  check_int_sizes({row_offsets.numel(), W.size(0), values.numel()}, "nested_mse");
  return cuda::nested_mse(values, indices, row_offsets, W, bias, target, group_ends);
}

Tensor nested_mse_backward(const Tensor& grad_loss, const Tensor& values, const Tensor& indices,
                           const Tensor& row_offsets, const Tensor& W, const Tensor& bias, const Tensor& target,
                           IntArrayRef group_ends) {
  check_mse_args(values, indices, row_offsets, W, bias, target, group_ends);
  const int64_t m = static_cast<int64_t>(group_ends.size());
  check_grad_loss(grad_loss, W, m);
  check_int_sizes({row_offsets.numel(), W.size(0), values.numel()}, "nested_mse_backward");
  return cuda::nested_mse_backward(grad_loss, values, indices, row_offsets, W, bias, target, group_ends);
}

Tensor grouped_dot(const Tensor& S, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                   IntArrayRef group_ends) {
  check_grouped_dot_args(S, indices, row_offsets, W, group_ends);
  check_int_sizes({row_offsets.numel(), W.size(0), indices.numel()}, "grouped_dot");
  return cuda::grouped_dot(S, indices, row_offsets, W, group_ends);
}

// The CPU kernel fuses the dots into the S pass (cache reuse); on CUDA the two kernels run back to back.
std::tuple<Tensor, Tensor> nested_mse_backward_dot(const Tensor& grad_loss, const Tensor& values,
                                                   const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                                                   const Tensor& bias, const Tensor& target, IntArrayRef group_ends) {
  Tensor S = nested_mse_backward(grad_loss, values, indices, row_offsets, W, bias, target, group_ends);
  return {S, grouped_dot(S, indices, row_offsets, W, group_ends)};
}

std::tuple<Tensor, Tensor> latent_grad(const Tensor& S, const Tensor& values, const Tensor& indices,
                                       const Tensor& row_offsets, IntArrayRef group_ends, int64_t num_latents,
                                       at::ScalarType dtype, bool transposed) {
  check_latent_grad_args(S, values, indices, row_offsets, group_ends, num_latents);
  check_float_dtype(dtype, "dtype");
  check_int_sizes({row_offsets.numel(), num_latents, values.numel()}, "latent_grad");
  return cuda::latent_grad(S, values, indices, row_offsets, group_ends, num_latents, dtype, transposed);
}

}  // namespace
}  // namespace cuda_entry
}  // namespace mx

TORCH_LIBRARY_IMPL(matryoshka_ext, CUDA, m) {
  m.impl("topk_select", &mx::cuda_entry::topk_select);
  m.impl("batch_topk_select", &mx::cuda_entry::batch_topk_select);
  m.impl("nested_decode", &mx::cuda_entry::nested_decode);
  m.impl("nested_mse", &mx::cuda_entry::nested_mse);
  m.impl("nested_mse_backward", &mx::cuda_entry::nested_mse_backward);
  m.impl("grouped_dot", &mx::cuda_entry::grouped_dot);
  m.impl("nested_mse_backward_dot", &mx::cuda_entry::nested_mse_backward_dot);
  m.impl("latent_grad", &mx::cuda_entry::latent_grad);
}
#endif  // MX_WITH_CUDA
