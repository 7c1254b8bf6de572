"""circuit-tracer (0.5): export a set of per-layer transcoders in its ``transcoder_set`` layout.

    config.yaml              model_kind: transcoder_set, feature_input_hook / feature_output_hook (hook names
                             relative to ``blocks.{layer}``, e.g. ``ln2.hook_normalized`` / ``hook_mlp_out``),
                             model_name, scan, and our metadata
    layer_{i}.safetensors    W_enc [F, d_model] (transposed: circuit-tracer computes F.linear(x, W_enc, b_enc)),
                             b_enc [F], W_dec [F, d_model], b_dec [d_model], activation_function.threshold [F],
                             and for skip transcoders W_skip [d_model, d_model] (output x input: circuit-tracer
                             adds input_acts @ W_skip.T, so it stores the transpose of our [d_in, d_out])

This is the layout ``circuit_tracer.transcoder.load_transcoder_set`` / ``load_relu_transcoder`` read (the
``activation_function.threshold`` key selects its ``JumpReLU``: ``x * (x > threshold)``, exactly ours), the
layout of its local cache (``load_transcoders_from_cache``) and of hub repos without a ``transcoders`` list,
so uploading the folder as a repo makes ``ReplacementModel.from_pretrained(model, "user/repo")`` work.
circuit-tracer transcoders map d_model -> d_model, and a ``TranscoderSet`` needs one transcoder for every layer
0..n_layers-1 and reads ``skip_connection`` off layer 0 (so a set is all skip transcoders or none); exporting
fewer layers writes loadable files but a set only circuit-tracer's single-layer loader
(``load_relu_transcoder``) can use, and ``export_circuit_tracer`` says so in ``config.yaml`` (``complete``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._common import JumpReLUWeights, ensure_empty_or_new, jumprelu_weights

CONFIG_NAME = "config.yaml"


def layer_file(layer: int) -> str:
    return f"layer_{layer}.safetensors"


def _relative_hook(hook: str, layer: int) -> str:
    """``blocks.6.ln2.hook_normalized`` -> ``ln2.hook_normalized`` (circuit-tracer prepends ``blocks.{layer}.``)."""
    prefix = f"blocks.{layer}."
    if not hook.startswith(prefix):
        raise ValueError(f"circuit-tracer hooks live inside blocks.{layer}; got {hook!r}")
    return hook[len(prefix) :]


def export_circuit_tracer(
    transcoders: Mapping[int, Any] | Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    model_name: str | None = None,
    n_layers: int | None = None,
    scan: str | None = None,
    dtype: str | torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write ``transcoders`` (``{layer: transcoder}`` or a sequence whose layers come from their metadata) as a
    circuit-tracer transcoder set in ``out_dir``; returns ``out_dir``.

    Each value is anything ``jumprelu_weights`` accepts (path, MatryoshkaTranscoder, loaded transcoder). All must
    share the relative input/output hooks and have d_in == d_out. ``n_layers`` (the model's layer count, when
    known) lets ``config.yaml`` record whether the set is complete (layers 0..n_layers-1).
    """
    from safetensors.torch import save_file

    items: list[tuple[int | None, Any]] = (
        list(transcoders.items()) if isinstance(transcoders, Mapping) else [(None, t) for t in transcoders]
    )
    if not items:
        raise ValueError("export_circuit_tracer: no transcoders given")
    weights: dict[int, JumpReLUWeights] = {}
    for layer, tc in items:
        w = jumprelu_weights(tc, layer=layer, model_name=model_name, dtype=dtype)
        lay = w.require_layer("circuit-tracer export")
        w.require_sites("circuit-tracer export")
        if lay in weights:
            raise ValueError(f"circuit-tracer export: two transcoders for layer {lay}")
        if w.d_in != w.d_out:
            raise ValueError(f"circuit-tracer transcoders map d_model -> d_model; layer {lay} is {w.d_in}->{w.d_out}")
        weights[lay] = w
    skips = {lay for lay, w in weights.items() if w.W_skip is not None}
    if skips and skips != set(weights):
        raise ValueError(
            f"circuit-tracer export: layers {sorted(skips)} have a skip connection (W_skip) and layers "
            f"{sorted(set(weights) - skips)} do not; a circuit-tracer TranscoderSet is all skip transcoders or none"
        )
    hooks = {(_relative_hook(w.input_hook, lay), _relative_hook(w.output_hook, lay)) for lay, w in weights.items()}
    if len(hooks) != 1:
        raise ValueError(f"circuit-tracer export: every layer must use the same relative hooks, got {sorted(hooks)}")
    (hook_in, hook_out) = hooks.pop()
    layers = sorted(weights)
    complete = layers == list(range(n_layers if n_layers is not None else layers[-1] + 1))

    out = ensure_empty_or_new(out_dir, overwrite, (CONFIG_NAME, *(layer_file(i) for i in layers)))
    for lay in layers:
        w = weights[lay]
        tensors = {
            "W_enc": w.W_enc.t().contiguous(),  # [F, d_model]
            "b_enc": w.b_enc,
            "W_dec": w.W_dec,
            "b_dec": w.b_dec,
            "activation_function.threshold": w.threshold.to(w.W_enc.dtype),
        }
        if w.W_skip is not None:
            tensors["W_skip"] = w.W_skip.t().contiguous()  # [d_model out, d_model in]
        save_file(tensors, os.path.join(out, layer_file(lay)), metadata={"format": "circuit-tracer-plt"})
    first = weights[layers[0]]
    config = {
        "model_kind": "transcoder_set",
        "model_name": first.hub_model_name,
        "feature_input_hook": hook_in,
        "feature_output_hook": hook_out,
        "scan": scan or f"matryoshka-ext/{first.name}",
        "layers": layers,
        "complete": bool(complete),
        "matryoshka_ext": {str(lay): weights[lay].metadata() for lay in layers},
    }
    import yaml

    with open(os.path.join(out, CONFIG_NAME), "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    return Path(out)
