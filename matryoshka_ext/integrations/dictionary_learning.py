"""dictionary_learning (0.1): export as an ``ae.pt`` + ``config.json`` folder its loaders read.

dictionary_learning stores a dictionary as ``torch.save`` of a plain state dict (``ae.pt``) and picks the class
from ``config.json["trainer"]["dict_class"]`` (``dictionary_learning.utils.load_dictionary``). Two targets:

* ``MatryoshkaBatchTopKSAE`` (default for our transcoders): state ``W_enc [d, F]``, ``b_enc [F]``, ``W_dec [F, d]``,
  ``b_dec [d]``, ``k`` (int32 scalar), ``threshold`` (float32 scalar), ``group_sizes`` (int64 [m]). It encodes
  ``relu((x - b_dec) @ W_enc + b_enc)`` masked by ``> threshold``; a transcoder has no input bias, so we store
  ``b_enc' = b_enc + b_dec @ W_enc`` (exact: the pre-activations are unchanged). One threshold for all latents,
  as ours has; the groups and k carry over, so ``MatryoshkaBatchTopKSAE.encode(x, use_threshold=False)`` is
  the BatchTopK selection we trained with.
* ``JumpReluAutoEncoder`` (per-latent thresholds, e.g. a converted Gemma Scope transcoder): ``W_enc``, ``b_enc``,
  ``W_dec``, ``b_dec``, ``threshold [F]``; ``apply_b_dec_to_input`` is False there, no reparametrisation.

Both classes have one ``activation_dim``, so d_in must equal d_out (true for MLP transcoders). ``decode`` then
predicts the *output* site (``config.json`` records both hooks): use it as a transcoder, not as an SAE.
Neither class has a skip matrix: exporting a skip transcoder raises ValueError (``require_no_skip``), never drops it.
We write with ``torch.save`` of tensors only (no pickled objects); we never ``torch.load`` peer files ourselves
except with ``weights_only=True`` (``load_dictionary_learning``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ._common import JumpReLUWeights, ensure_empty_or_new, jumprelu_weights

AE_NAME = "ae.pt"
CONFIG_NAME = "config.json"
DICT_CLASSES = ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder")


def dictionary_learning_state(w: JumpReLUWeights, dict_class: str) -> dict[str, torch.Tensor]:
    """The ``ae.pt`` state dict of ``w`` for ``dict_class`` (see the module docstring)."""
    w.require_no_skip("dictionary_learning export")
    if w.d_in != w.d_out:
        raise ValueError(f"dictionary_learning dictionaries have one activation_dim; this is {w.d_in}->{w.d_out}")
    if dict_class == "JumpReluAutoEncoder":
        return {
            "W_enc": w.W_enc,
            "b_enc": w.b_enc,
            "W_dec": w.W_dec,
            "b_dec": w.b_dec,
            "threshold": w.threshold.to(w.W_enc.dtype),
        }
    if dict_class != "MatryoshkaBatchTopKSAE":
        raise ValueError(f"dict_class must be one of {DICT_CLASSES}, got {dict_class!r}")
    thr = w.threshold
    if not bool((thr == thr[0]).all()):
        raise ValueError(
            "MatryoshkaBatchTopKSAE keeps one threshold; these differ per latent (use JumpReluAutoEncoder)"
        )
    # fold the input bias it subtracts: (x - b_dec) @ W_enc + b_enc' == x @ W_enc + b_enc
    b_enc = (w.b_enc.double() + w.b_dec.double() @ w.W_enc.double()).to(w.b_enc.dtype)
    sizes = w.group_sizes or [w.num_latents]
    return {
        "k": torch.tensor(int(w.k if w.k is not None else 1), dtype=torch.int32),
        "threshold": thr[0].float().clone(),
        "group_sizes": torch.tensor(sizes, dtype=torch.int64),
        "W_enc": w.W_enc,
        "b_enc": b_enc.contiguous(),
        "W_dec": w.W_dec,
        "b_dec": w.b_dec,
    }


def export_dictionary_learning(
    transcoder: Any,
    out_dir: str | os.PathLike,
    *,
    dict_class: str = "auto",
    layer: int | None = None,
    input_hook: str | None = None,
    output_hook: str | None = None,
    model_name: str | None = None,
    dtype: str | torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write ``transcoder`` as ``ae.pt`` + ``config.json`` in ``out_dir``; returns ``out_dir``.

    ``dict_class="auto"``: ``MatryoshkaBatchTopKSAE`` when the thresholds are one value (ours), else
    ``JumpReluAutoEncoder``. Sites are recorded when known (not required).
    """
    w = jumprelu_weights(
        transcoder, layer=layer, input_hook=input_hook, output_hook=output_hook, model_name=model_name, dtype=dtype
    )
    if dict_class == "auto":
        uniform = bool((w.threshold == w.threshold[0]).all())
        dict_class = "MatryoshkaBatchTopKSAE" if uniform else "JumpReluAutoEncoder"
    state = {k: v.contiguous().cpu() for k, v in dictionary_learning_state(w, dict_class).items()}
    trainer: dict[str, Any] = {
        "trainer_class": "MatryoshkaBatchTopKTrainer" if dict_class == "MatryoshkaBatchTopKSAE" else "JumpReluTrainer",
        "dict_class": dict_class,
        "activation_dim": w.d_in,
        "dict_size": w.num_latents,
        "layer": w.layer,
        "lm_name": w.hub_model_name,
        "submodule_name": w.input_hook,
    }
    if dict_class == "MatryoshkaBatchTopKSAE":
        sizes = w.group_sizes or [w.num_latents]
        trainer.update(k=int(state["k"]), group_sizes=list(sizes), group_fractions=[s / w.num_latents for s in sizes])
    config = {
        "trainer": trainer,
        "transcoder": {"input_hook": w.input_hook, "output_hook": w.output_hook, **w.metadata()},
    }
    out = ensure_empty_or_new(out_dir, overwrite, (AE_NAME, CONFIG_NAME))
    torch.save(state, os.path.join(out, AE_NAME))
    with open(os.path.join(out, CONFIG_NAME), "w") as fh:
        json.dump(config, fh, indent=2)
    return Path(out)


def load_dictionary_learning(path: str | os.PathLike, name: str | None = None) -> Any:
    """A dictionary_learning folder (``ae.pt`` + ``config.json``; MatryoshkaBatchTopKSAE, BatchTopKSAE,
    JumpReluAutoEncoder, AutoEncoder) -> ``SparseTranscoder`` running its inference forward (``weights_only``
    load; no dictionary_learning import needed). Our exports come back with their Matryoshka prefixes."""
    from ..loaders import SparseTranscoder

    p = Path(path)
    with open(p / CONFIG_NAME) as fh:
        cfg = json.load(fh)
    trainer = cfg.get("trainer", {})
    dict_class = trainer.get("dict_class")
    sd = torch.load(p / AE_NAME, map_location="cpu", weights_only=True)
    W_enc, W_dec, b_dec = sd["W_enc"], sd["W_dec"], sd["b_dec"]
    b_enc = sd.get("b_enc", torch.zeros(W_enc.shape[1], dtype=W_enc.dtype))
    meta = {
        "format": "dictionary-learning",
        "path": str(p),
        "layer": trainer.get("layer"),
        "model_name": trainer.get("lm_name"),
        **(cfg.get("transcoder") or {}),
    }
    name = name or p.name
    if dict_class in ("MatryoshkaBatchTopKSAE", "BatchTopKSAE"):
        # relu((x - b_dec) @ W_enc + b_enc) masked by > threshold: an input bias of b_dec, then JumpReLU
        thr = sd["threshold"].float()
        sizes = sd["group_sizes"].tolist() if "group_sizes" in sd else None
        ends = None if sizes is None else torch.tensor(sizes).cumsum(0).tolist()
        return SparseTranscoder(
            W_enc,
            b_enc,
            W_dec,
            b_dec,
            activation="jumprelu",
            threshold=thr.clamp_min(0),
            input_bias=b_dec,
            prefix_ends=ends,
            relu_first=True,
            name=name,
            meta=meta,
        )
    if dict_class == "JumpReluAutoEncoder":
        return SparseTranscoder(
            W_enc,
            b_enc,
            W_dec,
            b_dec,
            activation="jumprelu",
            threshold=sd["threshold"],
            relu_first=True,
            name=name,
            meta=meta,
        )
    if dict_class == "AutoEncoder":  # encoder/decoder are nn.Linear there
        return SparseTranscoder(
            sd["encoder.weight"].t(),
            sd["encoder.bias"],
            sd["decoder.weight"].t(),
            sd["bias"],
            activation="relu",
            input_bias=sd["bias"],
            name=name,
            meta=meta,
        )
    raise ValueError(f"{p}: dictionary_learning class {dict_class!r} is not supported")
