"""SAEBench (sae-bench 0.6): an adapter with the interface its custom-SAE evaluations use.

SAEBench's evaluations take any object with (``sae_bench/custom_saes/README.md`` and ``base_sae.BaseSAE``):
``encode(x [..., d_in]) -> [..., d_sae]`` (dense), ``decode(f) -> [..., d_out]``, ``forward(x)``, parameters
``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]`` (unit rows), ``b_enc``, ``b_dec``, attributes ``device`` and
``dtype``, and ``cfg`` with ``d_in``, ``d_sae``, ``hook_name``, ``hook_layer``, ``model_name``, ``dtype`` and the
blank SAELens fields its core evaluation reads (``CustomSAEConfig``). ``cfg.hook_name`` is the *input* site,
where SAEBench collects the activations it encodes.

For a transcoder only the encode-only evaluations are meaningful (sparse probing, the k-sparse probing part of
absorption, autointerp): the others splice ``decode(encode(x))`` back into ``hook_name``, but a transcoder's
output belongs to another site (``cfg.hook_name_out``). ``SAEBenchTranscoder`` is a plain ``nn.Module``
(SAEBench needs no base class), so it builds and is tested without sae-bench installed; when sae-bench is
importable, ``cfg`` is its own ``CustomSAEConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._common import dtype_from_name, dtype_name, jumprelu_weights


@dataclass
class SAEBenchConfig:
    """The fields of sae_bench's ``CustomSAEConfig`` (used when sae-bench is not installed), plus the output site."""

    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = ""
    apply_b_dec_to_input: bool | None = None
    finetuning_scaling_factor: bool | None = None
    activation_fn_str: str = ""
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = ""
    device: str = ""
    dataset_path: str = ""
    dataset_trust_remote_code: bool = True
    seqpos_slice: tuple = (None,)
    training_tokens: int = -100_000
    sae_lens_training_version: str | None = None
    neuronpedia_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _make_cfg(**kw: Any) -> Any:
    """sae_bench's CustomSAEConfig when importable, else ``SAEBenchConfig`` (same fields)."""
    try:
        from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig
    except ImportError:
        return SAEBenchConfig(**kw)
    return CustomSAEConfig(**kw)


class SAEBenchTranscoder(nn.Module):
    """A JumpReLU transcoder behind SAEBench's custom-SAE interface (see the module docstring).

    encode: x [..., d_in] -> f [..., d_sae] = pre * (pre > threshold), pre = x @ W_enc + b_enc (dense, as SAEBench
    wants); decode: f [..., d_sae] -> f @ W_dec + b_dec [..., d_out] (+ x @ W_skip when given x); forward(x) =
    decode(encode(x), x=x), so a skip transcoder's skip term is in ``forward`` (``W_skip`` [d_in, d_out], None
    otherwise). Weights are frozen ``nn.Parameter``s; ``.to(device=..., dtype=...)`` keeps
    ``device``/``dtype``/``cfg.dtype`` in sync.
    """

    def __init__(
        self,
        transcoder: Any,
        *,
        layer: int | None = None,
        input_hook: str | None = None,
        output_hook: str | None = None,
        model_name: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        architecture: str = "matryoshka_jumprelu_transcoder",
    ) -> None:
        super().__init__()
        w = jumprelu_weights(
            transcoder,
            layer=layer,
            input_hook=input_hook,
            output_hook=output_hook,
            model_name=model_name,
            dtype=torch.float32,
        )
        lay, hook_in, hook_out = w.require_sites("SAEBench adapter")
        self.W_enc = nn.Parameter(w.W_enc.clone(), requires_grad=False)
        self.b_enc = nn.Parameter(w.b_enc.clone(), requires_grad=False)
        self.W_dec = nn.Parameter(w.W_dec.clone(), requires_grad=False)
        self.b_dec = nn.Parameter(w.b_dec.clone(), requires_grad=False)
        self.threshold = nn.Parameter(w.threshold.float().clone(), requires_grad=False)
        skip = None if w.W_skip is None else nn.Parameter(w.W_skip.clone(), requires_grad=False)
        self.register_parameter("W_skip", skip)
        self.hook_name_out = hook_out
        self.prefix_ends = w.prefix_ends
        self.meta = w.metadata()
        self.cfg = _make_cfg(
            model_name=w.hub_model_name or "",
            d_in=w.d_in,
            d_sae=w.num_latents,
            hook_layer=int(lay if lay is not None else 0),
            hook_name=hook_in,
            architecture=architecture,
            apply_b_dec_to_input=False,
            finetuning_scaling_factor=False,
            activation_fn_str="jumprelu",
        )
        self.cfg.hook_name_out = hook_out  # extra field: the site decode() predicts
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.cfg.dtype = "float32"
        self.to(device=torch.device(device), dtype=dtype_from_name(dtype))

    def to(self, *args: Any, **kwargs: Any) -> SAEBenchTranscoder:
        """``nn.Module.to`` that also updates ``device``, ``dtype`` and ``cfg.dtype`` (SAEBench reads them)."""
        super().to(*args, **kwargs)
        self.threshold.data = self.threshold.data.float()  # compared in float32 whatever the weights' dtype
        p = self.W_enc
        self.device, self.dtype = p.device, p.dtype
        self.cfg.dtype = dtype_name(p.dtype)
        self.cfg.device = str(p.device)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> dense activations [..., d_sae] in ``self.dtype``."""
        pre = x.to(self.dtype) @ self.W_enc + self.b_enc
        return pre * (pre.float() > self.threshold)

    def decode(
        self, feature_acts: torch.Tensor, prefix: int | None = None, x: torch.Tensor | None = None
    ) -> torch.Tensor:
        """f [..., d_sae] -> [..., d_out] from all latents, or the first ``prefix`` Matryoshka groups (1..m);
        plus the skip term x @ W_skip when ``x`` [..., d_in] is given and the transcoder has one."""
        f = feature_acts.to(self.dtype)
        if prefix is None or self.prefix_ends is None:
            out = f @ self.W_dec + self.b_dec
        else:
            e = self.prefix_ends[prefix - 1]
            out = f[..., :e] @ self.W_dec[:e] + self.b_dec
        if x is not None and self.W_skip is not None:
            out = out + x.to(self.dtype) @ self.W_skip
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x=x)

    @torch.no_grad()
    def check_decoder_norms(self) -> bool:
        """True when every decoder row has unit norm (SAEBench's recommended check; ours are unit by design)."""
        norms = self.W_dec.float().norm(dim=1)
        tol = 1e-2 if self.dtype in (torch.bfloat16, torch.float16) else 1e-5
        return bool(torch.allclose(norms, torch.ones_like(norms), atol=tol))
