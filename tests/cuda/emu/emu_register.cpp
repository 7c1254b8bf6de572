// Test-only: the CUDA kernels (run by the CPU emulator) as torch.ops.mx_emu.*, same schemas as the real ops,
// taking CPU tensors. tests/cuda/emu/run_emu.py compares them with the CPU kernels.
#include <torch/library.h>

#include "common.h"

TORCH_LIBRARY(mx_emu, m) {
  m.def("topk_select(Tensor pre, int k) -> (Tensor values, Tensor indices, Tensor row_offsets)");
  m.def("batch_topk_select(Tensor pre, int k) -> (Tensor values, Tensor indices, Tensor row_offsets)");
  m.def("topk_select_cols(Tensor pre, Tensor cols, int k) -> (Tensor values, Tensor indices, Tensor row_offsets)");
  m.def("nested_decode(Tensor values, Tensor indices, Tensor row_offsets, Tensor W, Tensor? bias, "
        "int[] group_ends) -> Tensor");
  m.def("nested_mse(Tensor values, Tensor indices, Tensor row_offsets, Tensor W, Tensor bias, Tensor target, "
        "int[] group_ends) -> Tensor");
  m.def("nested_mse_backward(Tensor grad_loss, Tensor values, Tensor indices, Tensor row_offsets, Tensor W, "
        "Tensor bias, Tensor target, int[] group_ends) -> Tensor");
  m.def("grouped_dot(Tensor S, Tensor indices, Tensor row_offsets, Tensor W, int[] group_ends) -> Tensor");
  m.def("latent_grad(Tensor S, Tensor values, Tensor indices, Tensor row_offsets, int[] group_ends, "
        "int num_latents, ScalarType dtype, bool transposed=False) -> (Tensor grad_W, Tensor value_sums)");
}

TORCH_LIBRARY_IMPL(mx_emu, CPU, m) {
  m.impl("topk_select", &mx::cuda::topk_select);
  m.impl("batch_topk_select", &mx::cuda::batch_topk_select);
  m.impl("topk_select_cols", &mx::cuda::topk_select_cols);
  m.impl("nested_decode", &mx::cuda::nested_decode);
  m.impl("nested_mse", &mx::cuda::nested_mse);
  m.impl("nested_mse_backward", &mx::cuda::nested_mse_backward);
  m.impl("grouped_dot", &mx::cuda::grouped_dot);
  m.impl("latent_grad", &mx::cuda::latent_grad);
}

#ifdef MX_EMU_OVERRIDE_CPU
// Dry runs of the CUDA tests on a machine without a GPU: the public ops' CPU kernels replaced by the emulated
// CUDA kernels (torch warns about the override), so mx.* on CPU tensors runs the CUDA code.
TORCH_LIBRARY_IMPL(matryoshka_ext, CPU, m) {
  m.impl("topk_select", &mx::cuda::topk_select);
  m.impl("batch_topk_select", &mx::cuda::batch_topk_select);
  m.impl("nested_decode", &mx::cuda::nested_decode);
  m.impl("nested_mse", &mx::cuda::nested_mse);
  m.impl("nested_mse_backward", &mx::cuda::nested_mse_backward);
  m.impl("grouped_dot", &mx::cuda::grouped_dot);
  m.impl("latent_grad", &mx::cuda::latent_grad);
}
#endif
