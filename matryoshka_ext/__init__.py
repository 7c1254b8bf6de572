"""matryoshka_ext: Matryoshka transcoders on fused sparse C++/CUDA kernels.

Importing this package imports torch only; model, data, logging and plotting libraries load where used.
"""

from ._library import has_cuda_kernels
from .ops import batch_topk, encode, nested_decode, nested_mse, topk
from .sparse import SparseActs

__version__ = "0.1.0"

__all__ = [
    "SparseActs",
    "batch_topk",
    "encode",
    "has_cuda_kernels",
    "nested_decode",
    "nested_mse",
    "topk",
]
