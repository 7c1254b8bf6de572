"""The weight format a peer's trained model is exported to, and back to a ``BaseTranscoder`` for our harness.

A folder with ``weights.safetensors`` (W_enc [d_in, F], b_enc [F], W_dec [F, d_out], b_dec [d_out], optional
threshold [F] or [], input_bias [d_in], W_skip [d_in, d_out]) and ``transcoder.json`` ({"activation", "k",
"prefix_ends", "name", "train": {...}}), in raw activation units: ``fold_scales`` first removes the scalar
input/output scaling a peer was trained under. SAELens rows also write the library's own inference folder
(``saelens/``, read by ``matryoshka_ext.loaders.load_transcoder``); the harness loads that one for them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

WEIGHTS = "weights.safetensors"
META = "transcoder.json"


def fold_scales(w: dict[str, torch.Tensor], sx: float, sy: float) -> dict[str, torch.Tensor]:
    """Weights trained on x' = sx x, y' = sy y -> the same map on raw x, y (pre-activations unchanged).

    pre = (x' - c) W + b = (x - c/sx)(sx W) + b;  y = y'/sy = a (W_dec/sy) + b_dec/sy + x (sx W_skip / sy).
    """
    out = dict(w)
    out["W_enc"] = w["W_enc"] * sx
    if w.get("input_bias") is not None:
        out["input_bias"] = w["input_bias"] / sx
    out["W_dec"] = w["W_dec"] / sy
    out["b_dec"] = w["b_dec"] / sy
    if w.get("W_skip") is not None:
        out["W_skip"] = w["W_skip"] * (sx / sy)
    return out


def save(path: str, w: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the folder (tensors made contiguous float32; None entries dropped)."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in w.items() if v is not None}
    save_file(tensors, os.path.join(path, WEIGHTS))
    with open(os.path.join(path, META), "w") as fh:
        json.dump(meta, fh, indent=2)


def load(path: str, name: str | None = None) -> Any:
    """The folder as a ``loaders.SparseTranscoder`` (with its prefix ends, so per-prefix metrics exist)."""
    from safetensors.torch import load_file

    from matryoshka_ext.loaders import SparseTranscoder

    with open(os.path.join(path, META)) as fh:
        meta = json.load(fh)
    t = load_file(os.path.join(path, WEIGHTS))
    return SparseTranscoder(
        t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"],
        activation=meta["activation"], threshold=t.get("threshold"), k=meta.get("k"),
        input_bias=t.get("input_bias"), W_skip=t.get("W_skip"), prefix_ends=meta.get("prefix_ends"),
        relu_first=True, name=name or meta.get("name", "peer"), meta={"format": "quality-exchange", "path": path},
    )  # fmt: skip


def load_saelens(path: str, prefix_ends: list[int] | None, name: str) -> Any:
    """SAELens' own inference folder through our loader, given the prefix ends SAELens does not store."""
    from matryoshka_ext.loaders import load_transcoder

    tc = load_transcoder(path, name=name)
    if prefix_ends:
        tc.prefix_ends = [int(e) for e in prefix_ends]
    return tc


def read_meta(path: str) -> dict[str, Any]:
    with open(os.path.join(path, META)) as fh:
        return json.load(fh)
