"""Data layer: hook sites, models, text, token contexts and activation buffers.

Light on purpose: the submodules import only torch and the standard library at import time; transformers,
transformer_lens, datasets and rdata are imported inside the functions that need them.
"""

from .activations import ActivationBatch, ActivationBuffer, ActivationSource, estimate_scales
from .models import load_model, random_model, tiny_model
from .sites import Sites, gemma_sites, sites_for
from .text import offline_corpus, text_dataset
from .tokens import TokenContexts, token_contexts

__all__ = [
    "ActivationBatch",
    "ActivationBuffer",
    "ActivationSource",
    "Sites",
    "TokenContexts",
    "estimate_scales",
    "gemma_sites",
    "load_model",
    "offline_corpus",
    "random_model",
    "sites_for",
    "text_dataset",
    "tiny_model",
    "token_contexts",
]
