"""One interface for every transcoder we can load: ours, Gemma Scope (1 and 2), SAELens folders.

A transcoder maps x [N, d_in] (the input site) to a prediction of y [N, d_out] (the output site) through F sparse
latents. Every loaded transcoder is a ``BaseTranscoder`` (an ``nn.Module`` holding no trainable state):

    tc(x)                      [N, d_out]   full reconstruction, skip connection included (x may be [..., d_in])
    tc.encode(x)               SparseActs   latent activations (CSR; L0 counts values > 0)
    tc.decode(acts, prefix)    [N, d_out]   decoder output from the first `prefix` groups (1..m; None = all);
                                            the affine skip term (if any) is NOT included: it needs x
    tc.decode_prefixes(acts)   [m, N, d_out] every prefix at once (one sparse pass)
    tc.reconstruct(x, prefix)  [N, d_out]   decode(encode(x), prefix) + skip(x)
    tc.d_in, tc.d_out, tc.num_latents, tc.prefix_ends (None for a flat dictionary), tc.name, tc.meta

``meta`` holds what the file says about where the transcoder belongs (``layer``, ``input_hook``,
``output_hook``, ``model_name``, ``format``, ``path``) when known; evaluation still takes its sites from
``data.sites`` so every model is scored on the same hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..sparse import SparseActs

ACTIVATIONS = ("jumprelu", "relu", "topk", "batchtopk")


def _ops():
    from .. import ops

    return ops


class BaseTranscoder(nn.Module):
    """Common interface (see the module docstring). Subclasses implement ``encode`` and ``decode_prefixes``."""

    name: str
    d_in: int
    d_out: int
    num_latents: int
    prefix_ends: list[int] | None
    meta: dict[str, Any]

    # ------------------------------------------------------------------------------------------ to implement
    def encode(self, x: torch.Tensor) -> SparseActs:  # pragma: no cover - interface
        """x [N, d_in] -> SparseActs over num_latents latents."""
        raise NotImplementedError

    def decode_prefixes(self, acts: SparseActs) -> torch.Tensor:  # pragma: no cover - interface
        """[m, N, d_out] decoder output of every prefix (skip term excluded)."""
        raise NotImplementedError

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """Affine skip term [N, d_out] added to the decoder output, or None when the transcoder has none."""
        return None

    def decoder_weights(self) -> torch.Tensor | None:
        """[F, d_out] decoder directions (for redundancy statistics), or None if not a linear decoder."""
        return None

    # ------------------------------------------------------------------------------------------ derived
    @property
    def ends(self) -> list[int]:
        """Prefix ends used for per-prefix metrics: ``prefix_ends`` or ``[num_latents]``."""
        return list(self.prefix_ends) if self.prefix_ends else [self.num_latents]

    @property
    def num_prefixes(self) -> int:
        return len(self.ends)

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def _check_prefix(self, prefix: int | None) -> int:
        m = self.num_prefixes
        p = m if prefix is None else prefix
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= m:
            raise ValueError(f"prefix must be an integer in [1, {m}] or None, got {prefix!r}")
        return p

    def decode(self, acts: SparseActs, prefix: int | None = None) -> torch.Tensor:
        """[N, d_out] from the first ``prefix`` groups (1..m; None = all). Skip term excluded."""
        p = self._check_prefix(prefix)
        return self.decode_prefixes(acts)[p - 1]

    def reconstruct(self, x: torch.Tensor, prefix: int | None = None) -> torch.Tensor:
        """x [..., d_in] -> [..., d_out]: decode(encode(x), prefix) + skip(x)."""
        lead = x.shape[:-1]
        x2 = self._flat(x)
        out = self.decode(self.encode(x2), prefix)
        s = self.skip(x2)
        if s is not None:
            out = out + s.to(out.dtype)
        return out.reshape(*lead, self.d_out)

    def reconstruct_prefixes(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseActs]:
        """x [N, d_in] -> ([m, N, d_out] every prefix's output incl. skip, the SparseActs used)."""
        x2 = self._flat(x)
        acts = self.encode(x2)
        out = self.decode_prefixes(acts)
        s = self.skip(x2)
        if s is not None:
            out = out + s.to(out.dtype).unsqueeze(0)
        return out, acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> [..., d_out], all latents and the skip term."""
        return self.reconstruct(x)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"{self.name}: x must end in d_in={self.d_in}, got shape {tuple(x.shape)}")
        return x.reshape(-1, self.d_in)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (name, format, shapes, prefix ends, meta)."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "num_latents": self.num_latents,
            "prefix_ends": self.prefix_ends,
            "meta": {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool, type(None)))},
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, d_in={self.d_in}, d_out={self.d_out}, F={self.num_latents}"


class SparseTranscoder(BaseTranscoder):
    """A transcoder given by its weights (Gemma Scope, SAELens, or any plain layout).

    pre = (x - input_bias) @ W_enc + b_enc                 W_enc [d_in, F], b_enc [F], input_bias [d_in] or None
    a   = activation(pre):
          "jumprelu":  pre * (pre > threshold)             threshold [F] (per latent) or [] (one value)
                       (with ``relu_first``: relu(pre) * (pre > threshold), SAELens' form; identical when
                       every threshold >= 0, which holds for Gemma Scope and our checkpoints)
          "relu":      relu(pre)
          "topk":      the k largest relu(pre) per row     (``k``)
          "batchtopk": the k*N largest relu(pre) over the batch
    out = a @ W_dec + b_dec (+ x @ W_skip)                 W_dec [F, d_out], b_dec [d_out], W_skip [d_in, d_out]

    ``prefix_ends`` makes the decoder nested (per-prefix outputs), as for our Matryoshka checkpoints.
    Weights are buffers (moved by ``.to``), never trained here.
    """

    def __init__(
        self,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
        activation: str = "jumprelu",
        threshold: torch.Tensor | float | None = None,
        k: int | None = None,
        input_bias: torch.Tensor | None = None,
        W_skip: torch.Tensor | None = None,
        prefix_ends: Sequence[int] | None = None,
        relu_first: bool = False,
        name: str = "transcoder",
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if W_enc.dim() != 2 or W_dec.dim() != 2:
            raise ValueError(f"W_enc and W_dec must be 2-D, got {tuple(W_enc.shape)} and {tuple(W_dec.shape)}")
        d_in, F = W_enc.shape
        if W_dec.shape[0] != F:
            raise ValueError(f"W_dec must be [F={F}, d_out], got {tuple(W_dec.shape)} (W_enc is {tuple(W_enc.shape)})")
        d_out = W_dec.shape[1]
        _check_shape("b_enc", b_enc, (F,))
        _check_shape("b_dec", b_dec, (d_out,))
        if input_bias is not None:
            _check_shape("input_bias", input_bias, (d_in,))
        if W_skip is not None:
            _check_shape("W_skip", W_skip, (d_in, d_out))
        if activation == "jumprelu":
            if threshold is None:
                raise ValueError("activation 'jumprelu' needs a threshold")
            threshold = torch.as_tensor(threshold, dtype=torch.float32)
            if threshold.dim() not in (0, 1) or (threshold.dim() == 1 and threshold.shape[0] != F):
                raise ValueError(f"threshold must be a scalar or [F={F}], got {tuple(threshold.shape)}")
        if activation in ("topk", "batchtopk") and (not isinstance(k, int) or k <= 0):
            raise ValueError(f"activation {activation!r} needs a positive integer k, got {k!r}")
        if prefix_ends is not None:
            ends = [int(e) for e in prefix_ends]
            if not ends or ends[-1] != F or any(b <= a for a, b in zip([0] + ends[:-1], ends)):
                raise ValueError(f"prefix_ends must increase strictly and end at F={F}, got {ends}")
            prefix_ends = ends
        self.register_buffer("W_enc", W_enc.detach().contiguous())
        self.register_buffer("b_enc", b_enc.detach().to(W_enc.dtype).contiguous())
        self.register_buffer("W_dec", W_dec.detach().contiguous())
        self.register_buffer("b_dec", b_dec.detach().to(W_dec.dtype).contiguous())
        self.register_buffer("threshold", threshold.detach().float() if torch.is_tensor(threshold) else None)
        self.register_buffer("input_bias", None if input_bias is None else input_bias.detach().to(W_enc.dtype))
        self.register_buffer("W_skip", None if W_skip is None else W_skip.detach().contiguous())
        self.activation = activation
        self.relu_first = relu_first
        self.k = k
        self.d_in, self.d_out, self.num_latents = int(d_in), int(d_out), int(F)
        self.prefix_ends = prefix_ends
        self.name = name
        self.meta = dict(meta or {})

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[N, F] encoder pre-activations."""
        x = self._flat(x).to(self.W_enc.dtype)
        if self.input_bias is not None:
            x = x - self.input_bias
        return torch.addmm(self.b_enc, x, self.W_enc)

    def encode(self, x: torch.Tensor) -> SparseActs:
        """x [N, d_in] -> SparseActs (see the class docstring for each activation)."""
        pre = self.pre_activations(x)
        if self.activation == "jumprelu":
            act = torch.relu(pre) if self.relu_first else pre
            return SparseActs.from_dense(act * (pre.float() > self.threshold))
        if self.activation == "relu":
            return SparseActs.from_dense(torch.relu(pre))
        if self.activation == "topk":
            return _ops().topk(pre.contiguous(), min(self.k, self.num_latents))
        return _ops().batch_topk(pre.contiguous(), min(self.k, self.num_latents))

    def decode_prefixes(self, acts: SparseActs) -> torch.Tensor:
        """[m, N, d_out] through ``mx.nested_decode`` (one sparse pass for all prefixes)."""
        W = self.W_dec
        acts = SparseActs(acts.values.to(W.dtype), acts.indices, acts.row_offsets, acts.num_latents)
        return _ops().nested_decode(acts, W, self.b_dec, self.ends)

    def decode(self, acts: SparseActs, prefix: int | None = None) -> torch.Tensor:
        p = self._check_prefix(prefix)
        e = self.ends[p - 1]
        ends = [e] if e == self.num_latents else [e, self.num_latents]  # the op wants the last end == F
        W = self.W_dec
        acts = SparseActs(acts.values.to(W.dtype), acts.indices, acts.row_offsets, acts.num_latents)
        return _ops().nested_decode(acts, W, self.b_dec, ends)[0]

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.W_skip is None:
            return None
        return self._flat(x).to(self.W_skip.dtype) @ self.W_skip

    def decoder_weights(self) -> torch.Tensor:
        return self.W_dec


class MatryoshkaAdapter(BaseTranscoder):
    """Our ``MatryoshkaTranscoder`` behind the common interface, reading its live parameters.

    Works on an in-memory (training) model as well as a loaded one: activation scales are honoured, so
    ``encode`` returns activations in the model's scaled units and outputs are in raw units. ``mode`` picks the
    selection: "jumprelu" (inference, the default), "batch" (BatchTopK) or "row" (TopK).
    """

    def __init__(self, model: Any, mode: str = "jumprelu", name: str = "matryoshka", meta: dict | None = None):
        super().__init__()
        if mode not in ("jumprelu", "batch", "row"):
            raise ValueError(f"mode must be 'jumprelu', 'batch' or 'row', got {mode!r}")
        self.model = model
        self.mode = mode
        cfg = model.cfg
        self.d_in, self.d_out, self.num_latents = int(cfg.d_in), int(cfg.d_out), int(cfg.dict_size)
        self.prefix_ends = list(model.group_ends)
        self.name = name
        self.meta = dict(meta or {})
        self.meta.setdefault("format", "matryoshka-ext")
        self.meta.setdefault("selection", mode)

    def encode(self, x: torch.Tensor) -> SparseActs:
        return self.model.encode(self._flat(x), mode=self.mode)

    def decode_prefixes(self, acts: SparseActs) -> torch.Tensor:
        m = self.model
        W = m.W_dec
        acts = SparseActs(acts.values.to(W.dtype), acts.indices, acts.row_offsets, acts.num_latents)
        r = _ops().nested_decode(acts, W, m.b_dec, self.prefix_ends)
        acc = torch.float64 if W.dtype == torch.float64 else torch.float32  # float64 models stay float64
        return (r.to(acc) / m.y_scale.to(acc)).to(W.dtype)

    def decode(self, acts: SparseActs, prefix: int | None = None) -> torch.Tensor:
        return self.model.decode(acts, self._check_prefix(prefix))

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """The model's affine skip term in raw units (``skip_connection``), or None."""
        return self.model.skip(self._flat(x))

    def decoder_weights(self) -> torch.Tensor:
        return self.model.W_dec


def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
