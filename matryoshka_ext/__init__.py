"""matryoshka_ext: Matryoshka transcoders on fused sparse C++/CUDA kernels.

Importing this package imports torch only; model, data, logging and plotting libraries load where used.
"""

from ._library import has_cuda_kernels
from .config import TrainConfig, TranscoderConfig
from .ops import batch_topk, encode, nested_decode, nested_mse, topk
from .sparse import SparseActs
from .transcoder import MatryoshkaTranscoder

__version__ = "0.1.0"


def load_transcoder(*args, **kwargs):
    """Load any supported transcoder (ours, Gemma Scope npz/safetensors, SAELens folders); see loaders/."""
    from .loaders import load_transcoder as _load

    return _load(*args, **kwargs)


__all__ = [
    "MatryoshkaTranscoder",
    "TrainConfig",
    "TranscoderConfig",
    "SparseActs",
    "batch_topk",
    "encode",
    "has_cuda_kernels",
    "load_transcoder",
    "nested_decode",
    "nested_mse",
    "topk",
]
