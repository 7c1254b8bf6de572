"""save_pretrained / from_pretrained: ``model.safetensors`` (folded weights) + ``config.json``; no pickle.

The saved weights have the activation scales folded in (``scaling.fold_scales``) and the config says
``activation_scaling: none``, so a loaded transcoder computes on raw activations exactly what the trained one did,
skip term included (``W_skip`` is saved when ``skip_connection`` is on).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..config import TranscoderConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "matryoshka-ext-transcoder"


def save_pretrained(model: Any, directory: str | os.PathLike) -> str:
    """Write ``model``'s folded weights and config to ``directory``; returns the folder."""
    from safetensors.torch import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    cfg = model.cfg.replace(activation_scaling="none")
    sd = {k: v.contiguous().cpu() for k, v in model.folded_state_dict().items()}
    save_file(sd, os.path.join(directory, WEIGHTS_NAME), metadata={"format": FORMAT})
    with open(os.path.join(directory, CONFIG_NAME), "w") as fh:
        json.dump({"format": FORMAT, "version": 1, **cfg.to_dict()}, fh, indent=2)
    return directory


def from_pretrained(cls: type, directory: str | os.PathLike, device: torch.device | str | None = None) -> Any:
    """Build a ``cls`` (MatryoshkaTranscoder) from a folder written by ``save_pretrained``."""
    from safetensors.torch import load_file

    directory = os.fspath(directory)
    with open(os.path.join(directory, CONFIG_NAME)) as fh:
        d = json.load(fh)
    d.pop("format", None)
    d.pop("version", None)
    model = cls(TranscoderConfig.from_dict(d), device=device)
    sd = load_file(os.path.join(directory, WEIGHTS_NAME), device=str(device or "cpu"))
    model.load_state_dict(sd)
    return model
