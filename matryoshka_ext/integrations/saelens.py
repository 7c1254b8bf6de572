"""SAELens (sae-lens 6.x): export as a ``jumprelu_transcoder`` (or ``jumprelu_skip_transcoder``) folder, and import
such folders back.

The folder is what ``sae_lens.SAE.load_from_disk`` reads and what SAELens itself writes for a
``JumpReLUTranscoder`` (``save_model``); a skip transcoder (ours with ``skip_connection``, Gemma Scope 2 with
``affine_skip_connection``) becomes a ``JumpReLUSkipTranscoder``, whose forward adds ``x @ W_skip.T`` with
``W_skip [d_out, d_in]`` stored in ``sae_weights.safetensors`` (the transpose of our ``[d_in, d_out]``):

    cfg.json                  {"architecture": "jumprelu_transcoder", "d_in", "d_sae", "d_out", "dtype", "device",
                               "apply_b_dec_to_input": false, "normalize_activations": "none",
                               "reshape_activations": "none", "metadata": {...}}
    sae_weights.safetensors   W_enc [d_in, F], b_enc [F], W_dec [F, d_out], b_dec [d_out], threshold [F]

SAELens computes ``relu(pre) * (pre > threshold)``, our JumpReLU ``pre * (pre > threshold)``: equal because our
thresholds are >= 0. ``metadata`` carries ``hook_name`` (input site) and ``hook_name_out`` (output site), which
is how ``HookedSAETransformer.add_sae`` splices a transcoder, ``sae_lens_version`` (>= 6 so no legacy config
conversion runs), ``model_name`` and our Matryoshka structure (``matryoshka_group_sizes``, ``..._prefix_ends``,
``matryoshka_k``): SAELens keeps unknown metadata keys, and ``load_saelens_transcoder`` restores the prefixes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ._common import JumpReLUWeights, dtype_name, ensure_empty_or_new, jumprelu_weights

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
ARCHITECTURE = "jumprelu_transcoder"
SKIP_ARCHITECTURE = "jumprelu_skip_transcoder"
#: written when sae-lens is not installed; any version >= 6.0.0 means "no pre-6.0 config conversion"
FALLBACK_SAE_LENS_VERSION = "6.0.0"


def installed_sae_lens_version() -> str:
    """The installed sae-lens version (metadata only, no import of sae_lens), or FALLBACK_SAE_LENS_VERSION."""
    from importlib import metadata

    try:
        return metadata.version("sae-lens")
    except metadata.PackageNotFoundError:
        return FALLBACK_SAE_LENS_VERSION


def saelens_config(w: JumpReLUWeights, sae_lens_version: str | None = None) -> dict[str, Any]:
    """The ``cfg.json`` mapping for ``w`` (sites must be known)."""
    _, hook_in, hook_out = w.require_sites("SAELens export")
    meta: dict[str, Any] = {
        "sae_lens_version": sae_lens_version or installed_sae_lens_version(),
        "sae_lens_training_version": None,  # not trained with SAELens
        "model_name": w.hub_model_name,
        "hook_name": hook_in,
        "hook_name_out": hook_out,
        "hook_head_index": None,
        "hook_head_index_out": None,
    }
    if w.ours:
        # our training prepends BOS and never trains (or splices) at BOS / pad positions
        meta.update(prepend_bos=True, exclude_special_tokens=True)
    meta.update(w.metadata())
    return {
        "architecture": ARCHITECTURE if w.W_skip is None else SKIP_ARCHITECTURE,
        "d_in": w.d_in,
        "d_sae": w.num_latents,
        "d_out": w.d_out,
        "dtype": dtype_name(w.W_enc.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": False,  # a transcoder: b_dec lives in the output space
        "normalize_activations": "none",  # our activation scales are folded into the weights
        "reshape_activations": "none",
        "metadata": meta,
    }


def export_saelens(
    transcoder: Any,
    out_dir: str | os.PathLike,
    *,
    layer: int | None = None,
    input_hook: str | None = None,
    output_hook: str | None = None,
    model_name: str | None = None,
    dtype: str | torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write ``transcoder`` (path, MatryoshkaTranscoder or loaded transcoder) as a SAELens ``jumprelu_transcoder``
    (``jumprelu_skip_transcoder`` with ``W_skip [d_out, d_in]`` when it has a skip connection).

    Returns ``out_dir`` (holding ``cfg.json`` + ``sae_weights.safetensors``). Sites: see ``jumprelu_weights``.
    ``dtype`` is the stored (and SAELens' run) dtype of all tensors, the threshold included.
    """
    from safetensors.torch import save_file

    w = jumprelu_weights(
        transcoder, layer=layer, input_hook=input_hook, output_hook=output_hook, model_name=model_name, dtype=dtype
    )
    w = w.to(w.W_enc.dtype, threshold_dtype=w.W_enc.dtype)  # SAELens loads every tensor in cfg["dtype"]
    cfg = saelens_config(w)
    out = ensure_empty_or_new(out_dir, overwrite, (CFG_NAME, WEIGHTS_NAME))
    tensors = {"W_enc": w.W_enc, "b_enc": w.b_enc, "W_dec": w.W_dec, "b_dec": w.b_dec, "threshold": w.threshold}
    if w.W_skip is not None:
        tensors["W_skip"] = w.W_skip.t().contiguous()  # SAELens: [d_out, d_in], forward adds x @ W_skip.T
    save_file(tensors, os.path.join(out, WEIGHTS_NAME))
    with open(os.path.join(out, CFG_NAME), "w") as fh:
        json.dump(cfg, fh, indent=2)
    return Path(out)


def load_saelens_transcoder(path: str | os.PathLike, name: str | None = None) -> Any:
    """A SAELens folder -> ``SparseTranscoder`` (through ``loaders.load_saelens``), with Matryoshka prefixes.

    When ``cfg.json`` metadata holds ``matryoshka_prefix_ends`` (our exports), the returned transcoder decodes
    per prefix (``decode(acts, prefix=i)``, ``decode_prefixes``), like the original.
    """
    from ..loaders.formats import load_saelens

    tc = load_saelens(path, name)
    with open(Path(path) / CFG_NAME) as fh:
        meta = json.load(fh).get("metadata") or {}
    ends = meta.get("matryoshka_prefix_ends")
    if ends:
        ends = [int(e) for e in ends]
        if ends[-1] != tc.num_latents or any(b <= a for a, b in zip([0] + ends[:-1], ends)):
            raise ValueError(f"{path}: metadata matryoshka_prefix_ends {ends} do not partition {tc.num_latents}")
        tc.prefix_ends = ends
        tc.meta["matryoshka_k"] = meta.get("matryoshka_k")
    return tc


def saelens_to_matryoshka(path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
    """A SAELens folder written by ``export_saelens`` from one of our transcoders -> ``MatryoshkaTranscoder``.

    Exact when every latent has the same threshold (ours do: one running threshold); the group sizes and k come
    from the metadata, and a ``W_skip`` turns ``skip_connection`` on.
    Useful to continue training or to run our kernels on an exported checkpoint.
    Raises ValueError for folders that do not describe a Matryoshka transcoder with a single threshold.
    """
    from ..config import TranscoderConfig
    from ..transcoder import MatryoshkaTranscoder

    with open(Path(path) / CFG_NAME) as fh:
        cfg = json.load(fh)
    meta = cfg.get("metadata") or {}
    tc = load_saelens_transcoder(path)
    sizes = meta.get("matryoshka_group_sizes") or [tc.num_latents]
    thr = tc.threshold if tc.threshold is not None else torch.zeros(())
    if thr.numel() > 1 and not bool((thr == thr.reshape(-1)[0]).all()):
        raise ValueError(f"{path}: per-latent thresholds differ; our transcoder keeps one threshold")
    k = meta.get("matryoshka_k") or min(32, tc.num_latents)
    tcfg = TranscoderConfig(
        d_in=tc.d_in,
        d_out=tc.d_out,
        dict_size=tc.num_latents,
        group_sizes=list(sizes),
        k=int(k),
        selection=meta.get("matryoshka_selection", "batch"),
        dtype=dtype_name(tc.W_enc.dtype),
        activation_scaling="none",
        skip_connection=tc.W_skip is not None,
    )
    model = MatryoshkaTranscoder(tcfg, device=device)
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if tc.W_skip is not None else ()):
            getattr(model, n).copy_(getattr(tc, n))  # the loader's W_skip is already [d_in, d_out]
        model.threshold.fill_(float(thr.reshape(-1)[0]))
        model.threshold_updates.fill_(int(meta.get("matryoshka_threshold_updates", 1)))
    return model.eval()
