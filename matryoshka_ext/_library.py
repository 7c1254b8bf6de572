"""Loads the compiled extension (which registers the torch.library schemas and kernels)."""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "matryoshka_ext._C is not built or does not match this torch "
        f"({torch.__version__}). Reinstall with `pip install --no-build-isolation -e .`: {exc}"
    ) from exc

ops = torch.ops.matryoshka_ext


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("matryoshka_ext::topk_select", "CUDA")
