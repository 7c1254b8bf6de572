// Shared declarations: argument checks used by every backend, and the kernel entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace mx {

using at::Tensor;
using c10::IntArrayRef;

// ---- argument checks (cheap: metadata only, no device sync) -------------------------------------------
// Errors surface in Python as ValueError / TypeError naming the argument.

inline void check_float(const Tensor& t, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK_TYPE(d == at::kFloat || d == at::kHalf || d == at::kBFloat16 || d == at::kDouble, name,
                   " must be float32, float16, bfloat16 or float64, got ", d);
}

inline void check_dim(const Tensor& t, int64_t dim, const char* name, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be ", dim, "-D ", shape, ", got shape ", t.sizes());
}

inline void check_same_device(const Tensor& a, const Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK_VALUE(a.device() == b.device(), na, " and ", nb, " must be on the same device, got ", a.device(),
                    " and ", b.device());
}

inline void check_same_dtype(const Tensor& a, const Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), na, " and ", nb, " must have the same dtype, got ",
                   a.scalar_type(), " and ", b.scalar_type());
}

// pre [N, F] for selection; returns (N, F).
inline std::pair<int64_t, int64_t> check_select(const Tensor& pre, int64_t k, const char* name = "pre") {
  check_float(pre, name);
  check_dim(pre, 2, name, "[N, F]");
  const int64_t n = pre.size(0), f = pre.size(1);
  TORCH_CHECK_VALUE(n > 0, name, ": empty batch (N == 0)");
  TORCH_CHECK_VALUE(f > 0, name, ": no latents (F == 0)");
  TORCH_CHECK_VALUE(k > 0 && k <= f, "k must satisfy 0 < k <= F = ", f, ", got ", k);
  TORCH_CHECK_VALUE(n * k < (int64_t(1) << 62), "k * N overflows");
  return {n, f};
}

inline void check_group_ends(IntArrayRef ends, int64_t num_latents) {
  TORCH_CHECK_VALUE(!ends.empty(), "group_ends must not be empty");
  int64_t prev = 0;
  for (size_t i = 0; i < ends.size(); ++i) {
    TORCH_CHECK_VALUE(ends[i] > prev, "group_ends must be strictly increasing positive integers, got ", ends);
    prev = ends[i];
  }
  TORCH_CHECK_VALUE(prev == num_latents, "group_ends must end at the number of latents F = ", num_latents,
                    ", got ", ends);
}

// CSR activations: values [nnz] float, indices [nnz] int64, row_offsets [N+1] int64; returns N.
inline int64_t check_csr(const Tensor& values, const Tensor& indices, const Tensor& row_offsets) {
  check_float(values, "values");
  check_dim(values, 1, "values", "[nnz]");
  check_dim(indices, 1, "indices", "[nnz]");
  check_dim(row_offsets, 1, "row_offsets", "[N+1]");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK_TYPE(row_offsets.scalar_type() == at::kLong, "row_offsets must be int64, got ",
                   row_offsets.scalar_type());
  TORCH_CHECK_VALUE(indices.numel() == values.numel(), "indices must have as many entries as values (",
                    values.numel(), "), got ", indices.numel());
  TORCH_CHECK_VALUE(row_offsets.numel() >= 2, "row_offsets must have N+1 >= 2 entries (empty batch), got ",
                    row_offsets.numel());
  check_same_device(values, indices, "values", "indices");
  check_same_device(values, row_offsets, "values", "row_offsets");
  return row_offsets.numel() - 1;
}

// Dictionary weights W [F, d] matching the CSR values.
inline void check_weight(const Tensor& W, const Tensor& values, const char* name) {
  check_float(W, name);
  check_dim(W, 2, name, "[F, d]");
  TORCH_CHECK_VALUE(W.size(0) > 0 && W.size(1) > 0, name, " must be non-empty, got shape ", W.sizes());
  check_same_device(W, values, name, "values");
  check_same_dtype(W, values, name, "values");
}

inline void check_bias(const Tensor& b, const Tensor& W, int64_t d, const char* name) {
  TORCH_CHECK_TYPE(b.defined(), name, " must be a tensor, got None");
  check_dim(b, 1, name, "[d]");
  TORCH_CHECK_VALUE(b.size(0) == d, name, " must have ", d, " entries, got ", b.size(0));
  check_same_device(b, W, name, "weight");
  check_same_dtype(b, W, name, "weight");
}

// An output dtype argument (latent_grad's `dtype`): one of the float dtypes the kernels produce.
inline void check_float_dtype(at::ScalarType d, const char* name) {
  TORCH_CHECK_TYPE(d == at::kFloat || d == at::kHalf || d == at::kBFloat16 || d == at::kDouble, name,
                   " must be float32, float16, bfloat16 or float64, got ", d);
}

// grad_loss [m] of nested_mse_backward: a float vector on W's device (a tensor on another device, meta
// included, would otherwise be copied or read as if it held data).
inline void check_grad_loss(const Tensor& grad_loss, const Tensor& W, int64_t m) {
  check_float(grad_loss, "grad_loss");
  TORCH_CHECK_VALUE(grad_loss.dim() == 1 && grad_loss.size(0) == m, "grad_loss must have shape [", m, "], got ",
                    grad_loss.sizes());
  check_same_device(grad_loss, W, "grad_loss", "W_dec");
}

// ---- kernels per backend (CPU always; CUDA when built with MX_WITH_CUDA) ---------------------------------
using Csr = std::tuple<Tensor, Tensor, Tensor>;

// The kernel set every backend defines, declared once and expanded in each backend namespace.
#define MX_BACKEND_KERNELS                                                                                       \
Csr topk_select(const Tensor& pre, int64_t k);                                                                   \
Csr batch_topk_select(const Tensor& pre, int64_t k);                                                             \
Csr topk_select_cols(const Tensor& pre, const Tensor& cols, int64_t k);                                          \
Tensor nested_decode(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,    \
                     const c10::optional<Tensor>& bias, IntArrayRef group_ends);                                 \
Tensor nested_mse(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,       \
                  const Tensor& bias, const Tensor& target, IntArrayRef group_ends);                             \
Tensor nested_mse_backward(const Tensor& grad_loss, const Tensor& values, const Tensor& indices,                 \
                           const Tensor& row_offsets, const Tensor& W, const Tensor& bias, const Tensor& target, \
                           IntArrayRef group_ends);                                                              \
Tensor grouped_dot(const Tensor& S, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,           \
                   IntArrayRef group_ends);                                                                      \
std::tuple<Tensor, Tensor> latent_grad(const Tensor& S, const Tensor& values, const Tensor& indices,             \
                                       const Tensor& row_offsets, IntArrayRef group_ends, int64_t num_latents,   \
                                       at::ScalarType dtype, bool transposed);

namespace cpu {
MX_BACKEND_KERNELS
std::tuple<Tensor, Tensor> nested_mse_backward_dot(const Tensor& grad_loss, const Tensor& values,
                                                   const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                                                   const Tensor& bias, const Tensor& target, IntArrayRef group_ends);
// BatchTopK of pre plus, per row, the top aux_k over the columns `cols` (AuxK), read in the same pass; returns the
// BatchTopK CSR and writes AuxK's into aux.
Csr batch_topk_select_aux(const Tensor& pre, int64_t k, const Tensor& cols, int64_t aux_k, Csr& aux);
}  // namespace cpu

namespace cuda {
MX_BACKEND_KERNELS
}  // namespace cuda

#undef MX_BACKEND_KERNELS

// Checks shared by all backends, one per op family (defined in checks.cpp).
void check_decode_args(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                       const c10::optional<Tensor>& bias, IntArrayRef group_ends);
void check_mse_args(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                    const Tensor& bias, const Tensor& target, IntArrayRef group_ends);
void check_grouped_dot_args(const Tensor& S, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                            IntArrayRef group_ends);
void check_latent_grad_args(const Tensor& S, const Tensor& values, const Tensor& indices,
                            const Tensor& row_offsets, IntArrayRef group_ends, int64_t num_latents);

}  // namespace mx
