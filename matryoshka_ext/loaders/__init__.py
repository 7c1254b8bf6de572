"""Load transcoders of any supported format into one interface (``BaseTranscoder``).

    from matryoshka_ext.loaders import load_transcoder
    tc = load_transcoder("runs/my-run")                                  # ours (run, checkpoint or save_pretrained)
    tc = load_transcoder("gemmascope/layer_12/width_16k/params.npz")      # Gemma Scope
    tc = load_transcoder("gs2/transcoder/layer_6_width_16k_l0_small")     # Gemma Scope 2 (params.safetensors)
    tc = load_transcoder("saelens_folder")                                # SAELens cfg.json + sae_weights
    tc = load_transcoder("hf:google/gemma-scope-2b-pt-transcoders/layer_12/width_16k/average_l0_82")
    y_hat = tc(x); acts = tc.encode(x); r = tc.decode(acts, prefix=2)

Importing this package imports torch only; numpy, safetensors and huggingface_hub load when used.
"""

from .base import BaseTranscoder, MatryoshkaAdapter, SparseTranscoder
from .formats import FormatError, detect_format, load_transcoder

__all__ = [
    "BaseTranscoder",
    "FormatError",
    "MatryoshkaAdapter",
    "SparseTranscoder",
    "detect_format",
    "load_transcoder",
]
