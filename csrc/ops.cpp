// Operator schemas (the stable contract), the backend-independent `encode`, shared argument checks, and the
// Python module stub that lets `import matryoshka_ext._C` load this library.
#include <Python.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <climits>
#include <cstring>

#include "common.h"
#include "cpu/reuse.h"

extern "C" {
// Importing matryoshka_ext._C runs the static TORCH_LIBRARY registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
}

namespace mx {

void check_decode_args(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                       const c10::optional<Tensor>& bias, IntArrayRef group_ends) {
  check_csr(values, indices, row_offsets);
  check_weight(W, values, "W_dec");
  if (bias.has_value()) check_bias(*bias, W, W.size(1), "b_dec");
  check_group_ends(group_ends, W.size(0));
}

void check_mse_args(const Tensor& values, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                    const Tensor& bias, const Tensor& target, IntArrayRef group_ends) {
  check_decode_args(values, indices, row_offsets, W, bias, group_ends);
  check_float(target, "target");
  check_dim(target, 2, "target", "[N, d_out]");
  const int64_t n = row_offsets.numel() - 1;
  TORCH_CHECK_VALUE(target.size(0) == n && target.size(1) == W.size(1), "target must have shape [N, d_out] = [",
                    n, ", ", W.size(1), "], got ", target.sizes());
  check_same_device(target, W, "target", "W_dec");
}

void check_grouped_dot_args(const Tensor& S, const Tensor& indices, const Tensor& row_offsets, const Tensor& W,
                            IntArrayRef group_ends) {
  check_float(S, "S");
  check_dim(S, 3, "S", "[m, N, d]");
  check_float(W, "W");
  check_dim(W, 2, "W", "[F, d]");
  check_group_ends(group_ends, W.size(0));
  TORCH_CHECK_VALUE(S.size(0) == static_cast<int64_t>(group_ends.size()) && S.size(1) == row_offsets.numel() - 1 &&
                        S.size(2) == W.size(1),
                    "S must have shape [m, N, d] = [", group_ends.size(), ", ", row_offsets.numel() - 1, ", ",
                    W.size(1), "], got ", S.sizes());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong && row_offsets.scalar_type() == at::kLong,
                   "indices and row_offsets must be int64");
  check_dim(indices, 1, "indices", "[nnz]");
  check_dim(row_offsets, 1, "row_offsets", "[N+1]");
  TORCH_CHECK_VALUE(row_offsets.numel() >= 2, "row_offsets must have N+1 >= 2 entries (empty batch), got ",
                    row_offsets.numel());
  check_same_device(S, W, "S", "W");
  check_same_device(indices, W, "indices", "W");
  check_same_device(row_offsets, W, "row_offsets", "W");
}

void check_latent_grad_args(const Tensor& S, const Tensor& values, const Tensor& indices,
                            const Tensor& row_offsets, IntArrayRef group_ends, int64_t num_latents) {
  const int64_t n = check_csr(values, indices, row_offsets);
  check_float(S, "S");
  check_dim(S, 3, "S", "[m, N, d]");
  check_group_ends(group_ends, num_latents);
  TORCH_CHECK_VALUE(S.size(0) == static_cast<int64_t>(group_ends.size()) && S.size(1) == n,
                    "S must have shape [m, N, d] with m = ", group_ends.size(), ", N = ", n, ", got ", S.sizes());
  check_same_device(S, values, "S", "values");
}

// Checks of the fused encoder's arguments, before the GEMM; returns F.
static int64_t check_encode_args(const Tensor& x, const Tensor& W_enc, const Tensor& b_enc, int64_t k) {
  check_float(x, "x");
  check_dim(x, 2, "x", "[N, d_in]");
  check_dim(W_enc, 2, "W_enc", "[d_in, F]");
  check_dim(b_enc, 1, "b_enc", "[F]");
  TORCH_CHECK_VALUE(x.size(0) > 0, "x: empty batch (N == 0)");
  TORCH_CHECK_VALUE(W_enc.size(0) == x.size(1), "W_enc must have d_in = ", x.size(1), " rows, got shape ",
                    W_enc.sizes());
  TORCH_CHECK_VALUE(b_enc.size(0) == W_enc.size(1), "b_enc must have F = ", W_enc.size(1), " entries, got ",
                    b_enc.size(0));
  check_same_device(x, W_enc, "x", "W_enc");
  check_same_device(x, b_enc, "x", "b_enc");
  check_same_dtype(x, W_enc, "x", "W_enc");
  check_same_dtype(x, b_enc, "x", "b_enc");
  // k against F before the GEMM. d_in == 0 is allowed: pre is then b_enc on every row, as in the reference.
  const int64_t f = W_enc.size(1);
  TORCH_CHECK_VALUE(f > 0, "W_enc: no latents (F == 0)");
  TORCH_CHECK_VALUE(k > 0 && k <= f, "k must satisfy 0 < k <= F = ", f, ", got ", k);
  return f;
}

// `dead` [n_dead] int64: strictly ascending latent ids in [0, F); 0 < aux_k <= n_dead. The content check reads
// the data (one small reduction and sync on CUDA, where the caller has synced on n_dead already).
static void check_aux_args(const Tensor& x, const Tensor& dead, int64_t aux_k, int64_t f) {
  TORCH_CHECK_TYPE(dead.scalar_type() == at::kLong, "dead must be int64 latent ids, got ", dead.scalar_type());
  check_dim(dead, 1, "dead", "[n_dead]");
  check_same_device(x, dead, "x", "dead");
  const int64_t nd = dead.numel();
  TORCH_CHECK_VALUE(nd > 0 && nd <= f, "dead must hold 1 to F = ", f, " latent ids, got ", nd);
  TORCH_CHECK_VALUE(aux_k > 0 && aux_k <= nd, "aux_k must satisfy 0 < aux_k <= len(dead) = ", nd, ", got ", aux_k);
  TORCH_CHECK_VALUE(x.size(0) * aux_k < (int64_t(1) << 62), "aux_k * N overflows");
  bool ok;
  if (dead.is_cpu()) {
    const Tensor d = dead.contiguous();
    const int64_t* p = d.data_ptr<int64_t>();
    ok = p[0] >= 0 && p[nd - 1] < f;
    for (int64_t i = 1; ok && i < nd; ++i) ok = p[i] > p[i - 1];
  } else {
    const Tensor ascending = nd > 1 ? (dead.slice(0, 1) > dead.slice(0, 0, nd - 1)).all()
                                    : at::ones({}, dead.options().dtype(at::kBool));
    ok = (ascending & (dead.min() >= 0) & (dead.max() < f)).item<bool>();
  }
  TORCH_CHECK_VALUE(ok, "dead must be strictly ascending latent ids in [0, F = ", f, ")");
}

static Csr select(const Tensor& pre, int64_t k, bool batch) {
  if (pre.is_cuda()) {
#ifdef MX_WITH_CUDA
    return batch ? cuda::batch_topk_select(pre, k) : cuda::topk_select(pre, k);
#else
    TORCH_CHECK(false, "matryoshka_ext was built without CUDA kernels; rebuild with MATRYOSHKA_EXT_CUDA=1");
#endif
  }
  return batch ? cpu::batch_topk_select(pre, k) : cpu::topk_select(pre, k);
}

// pre = x @ W_enc + b_enc [N, F]. On CPU it goes into a per-thread buffer reused across calls (cpu::reusable_empty,
// one slot): a fresh N x F buffer every step comes from mmap and costs a page fault per 4 KiB (about a third of
// the GEMM's own time at N=4096, F=8192). Nothing returned aliases it (the selections copy what they keep).
// Buffers above 1 GiB are not kept, so a one-off huge batch does not pin its memory. CUDA's allocator reuses.
static Tensor pre_activations(const Tensor& x, const Tensor& W_enc, const Tensor& b_enc) {
  if (!x.is_cpu()) return at::addmm(b_enc, x, W_enc);
  thread_local std::vector<Tensor> workspace;
  const int64_t n = x.size(0), f = W_enc.size(1);
  Tensor pre = cpu::reusable_empty(workspace, {n, f}, x.options(), 1);
  // What addmm_out does, in two steps: the bias broadcast into every row, then pre += x @ W_enc (beta = 1, the
  // same GEMM call, so the same bits). addmm_out's own broadcast goes through a strided element-wise copy that
  // took ~9 ms at N=4096, F=8192; row copies take a third of that.
  const Tensor b = b_enc.contiguous();
  const int64_t row_bytes = f * static_cast<int64_t>(b.element_size());
  const char* src = static_cast<const char*>(b.data_ptr());
  char* dst = static_cast<char*>(pre.data_ptr());
  at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::memcpy(dst + r * row_bytes, src, static_cast<size_t>(row_bytes));
  });
  pre.addmm_(x, W_enc);
  return pre;
}

// Fused encoder: GEMM through ATen (cuBLAS / CPU BLAS), then relu + selection. The N x F pre-activations die
// here; the backward (registered in Python) needs only the selected entries.
static Csr encode(const Tensor& x, const Tensor& W_enc, const Tensor& b_enc, int64_t k, bool batch) {
  check_encode_args(x, W_enc, b_enc, k);
  return select(pre_activations(x, W_enc, b_enc), k, batch);
}

// The encoder plus AuxK's selection from the same pre-activations: per row the top aux_k of relu(pre) over the
// dead columns, read in place (no second GEMM, no gathered copy). Both selections share one backward.
static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> encode_aux(const Tensor& x, const Tensor& W_enc,
                                                                           const Tensor& b_enc, int64_t k,
                                                                           bool batch, const Tensor& dead,
                                                                           int64_t aux_k) {
  const int64_t f = check_encode_args(x, W_enc, b_enc, k);
  check_aux_args(x, dead, aux_k, f);
  const Tensor pre = pre_activations(x, W_enc, b_enc);
  Csr aux;
  if (pre.is_cpu() && batch) {  // both selections in one pass over pre
    auto [v, i, r] = cpu::batch_topk_select_aux(pre, k, dead, aux_k, aux);
    return {v, i, r, std::get<0>(aux), std::get<1>(aux), std::get<2>(aux)};
  }
  auto [v, i, r] = select(pre, k, batch);
  if (pre.is_cuda()) {
#ifdef MX_WITH_CUDA
    TORCH_CHECK_VALUE(f < INT_MAX && dead.numel() < INT_MAX, "W_enc: F = ", f, " too large for the CUDA kernels");
    aux = cuda::topk_select_cols(pre, dead, aux_k);
#endif
  } else {
    aux = cpu::topk_select_cols(pre, dead, aux_k);
  }
  return {v, i, r, std::get<0>(aux), std::get<1>(aux), std::get<2>(aux)};
}

}  // namespace mx

TORCH_LIBRARY(matryoshka_ext, m) {
  // Selection of relu(pre) [N, F]: per row (topk) or over the whole batch (batch_topk, k*N entries).
  // Output is CSR: values [nnz] (pre's dtype), indices [nnz] int64 ascending per row, row_offsets [N+1] int64.
  m.def("topk_select(Tensor pre, int k) -> (Tensor values, Tensor indices, Tensor row_offsets)");
  m.def("batch_topk_select(Tensor pre, int k) -> (Tensor values, Tensor indices, Tensor row_offsets)");
  // relu(x @ W_enc + b_enc) then selection (batch=True: BatchTopK).
  m.def("encode(Tensor x, Tensor W_enc, Tensor b_enc, int k, bool batch) -> "
        "(Tensor values, Tensor indices, Tensor row_offsets)");
  // encode plus AuxK's selection from the same pre-activations: per row the top aux_k of relu(pre) over the
  // columns `dead` (int64, strictly ascending), as CSR with column ids; 0 < aux_k <= len(dead).
  m.def("encode_aux(Tensor x, Tensor W_enc, Tensor b_enc, int k, bool batch, Tensor dead, int aux_k) -> "
        "(Tensor values, Tensor indices, Tensor row_offsets, Tensor aux_values, Tensor aux_indices, "
        "Tensor aux_row_offsets)");
  // [m, N, d] in W's dtype: out[i] = bias + sum over entries with index < group_ends[i] of value * W[index].
  m.def("nested_decode(Tensor values, Tensor indices, Tensor row_offsets, Tensor W, Tensor? bias, "
        "int[] group_ends) -> Tensor");
  // [m] float32 (float64 for float64 inputs): mean over N and d of (out[i] - target)^2, without building out.
  m.def("nested_mse(Tensor values, Tensor indices, Tensor row_offsets, Tensor W, Tensor bias, Tensor target, "
        "int[] group_ends) -> Tensor");
  // Backward helpers. S [m, N, d] (accumulation dtype) holds suffix sums over prefixes of dL/dout[i]:
  // S[j] = sum_{i >= j} dL/dout[i]; nested_mse_backward builds it from grad_loss [m] without out.
  m.def("nested_mse_backward(Tensor grad_loss, Tensor values, Tensor indices, Tensor row_offsets, Tensor W, "
        "Tensor bias, Tensor target, int[] group_ends) -> Tensor");
  // Both of the above in one pass: (S, grouped_dot(S, indices, row_offsets, W, group_ends)).
  m.def("nested_mse_backward_dot(Tensor grad_loss, Tensor values, Tensor indices, Tensor row_offsets, Tensor W, "
        "Tensor bias, Tensor target, int[] group_ends) -> (Tensor S, Tensor grad_values)");
  // [nnz] in W's dtype: grad_values[e] = <W[index_e], S[group(index_e), row_e]>.
  m.def("grouped_dot(Tensor S, Tensor indices, Tensor row_offsets, Tensor W, int[] group_ends) -> Tensor");
  // Latent-major reduction, deterministic: grad_W [F, d] = sum_e value_e * S[group(index_e), row_e] into row
  // index_e, and value_sums [F] = sum_e value_e per latent; both in `dtype`. transposed=True returns grad_W as
  // a contiguous [d, F] (the encoder weight's layout, so autograd need not copy a transposed view).
  m.def("latent_grad(Tensor S, Tensor values, Tensor indices, Tensor row_offsets, int[] group_ends, "
        "int num_latents, ScalarType dtype, bool transposed=False) -> (Tensor grad_W, Tensor value_sums)");
}

TORCH_LIBRARY_IMPL(matryoshka_ext, CompositeExplicitAutograd, m) {
  m.impl("encode", &mx::encode);
  m.impl("encode_aux", &mx::encode_aux);
}
