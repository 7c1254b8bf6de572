"""What every export shares: a transcoder reduced to plain JumpReLU weights in raw activation units, plus its sites.

Every peer format we write (SAELens, circuit-tracer, dictionary_learning, SAEBench) stores the same five tensors
and computes the same function, so exports go through one intermediate, ``JumpReLUWeights``:

    pre = x @ W_enc + b_enc            x [N, d_in], W_enc [d_in, F], b_enc [F]
    a   = pre * (pre > threshold)      threshold [F] (>= 0, so this equals every peer's relu(pre) * (pre > threshold))
    y   = a @ W_dec + b_dec            W_dec [F, d_out], b_dec [d_out]
          (+ x @ W_skip)               W_skip [d_in, d_out]: the affine skip path of skip transcoders, or None

Our ``MatryoshkaTranscoder`` gets there through ``folded_state_dict`` (activation scales folded in, W_skip
included, the running threshold broadcast to one value per latent). Loaded ``SparseTranscoder``s (Gemma Scope,
SAELens) qualify when they are JumpReLU/ReLU without input bias, so the exporters also convert those.
Skip matrices: SAELens (``jumprelu_skip_transcoder``, ``W_skip [d_out, d_in]``) and circuit-tracer (``W_skip
[d_out, d_in]`` in each layer file) store them; dictionary_learning has no place for one, and its exporter raises
(``require_no_skip``) rather than write a transcoder that computes something else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch

#: Our alias for the offline model -> the hub model whose architecture and tokenizer it has (peers load by hub id).
HUB_MODEL_NAMES = {"gemma-3-270m-offline": "google/gemma-3-270m", "offline": "google/gemma-3-270m"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """'float32' / 'bfloat16' / 'float16' / 'float64' (or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> 'float32'."""
    return str(dtype).replace("torch.", "")


@dataclass
class JumpReLUWeights:
    """A JumpReLU transcoder ready to be written in a peer layout (see the module docstring for the math).

    Tensors are CPU, contiguous, all in ``dtype`` except ``threshold`` (float32 unless the export asks otherwise).
    ``group_sizes`` (Matryoshka groups, sum == F) and ``k`` (training sparsity) are None for flat dictionaries.
    Sites: ``input_hook`` / ``output_hook`` are full TransformerLens hook names (``blocks.L.ln2.hook_normalized``,
    ``blocks.L.hook_mlp_out``); ``ours`` is True when the weights come from a matryoshka-ext transcoder.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor
    W_skip: torch.Tensor | None = None
    group_sizes: list[int] | None = None
    k: int | None = None
    layer: int | None = None
    input_hook: str | None = None
    output_hook: str | None = None
    model_name: str | None = None
    name: str = "transcoder"
    ours: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def num_latents(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def prefix_ends(self) -> list[int] | None:
        """Cumulative group ends (the Matryoshka prefixes), or None."""
        if self.group_sizes is None:
            return None
        ends, total = [], 0
        for s in self.group_sizes:
            total += s
            ends.append(total)
        return ends

    @property
    def hub_model_name(self) -> str | None:
        """The model name a peer can load (our offline alias maps to its hub id)."""
        return HUB_MODEL_NAMES.get(self.model_name or "", self.model_name)

    def require_sites(self, what: str) -> tuple[int | None, str, str]:
        """(layer, input_hook, output_hook); raises ValueError naming the fix when the sites are unknown."""
        if not self.input_hook or not self.output_hook:
            raise ValueError(
                f"{what}: the hook sites of {self.name!r} are unknown (not a run folder and no site metadata). "
                "Pass layer=L (Gemma Scope sites blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out) or "
                "input_hook=/output_hook= (CLI: --layer / --input-hook / --output-hook)."
            )
        return self.layer, self.input_hook, self.output_hook

    def require_no_skip(self, what: str, argument: str = "transcoder") -> None:
        """Raise ValueError when these weights have a skip matrix: ``what`` (an export) has no place for it."""
        if self.W_skip is not None:
            raise ValueError(
                f"{what}: the {argument} argument ({self.name!r}) is a skip transcoder (affine skip connection "
                f"W_skip [{self.d_in}, {self.d_out}], transcoder.skip_connection=true) and this format has no place "
                "for W_skip; without it the export would compute another function. Export it to saelens or "
                "circuit-tracer, which store W_skip."
            )

    def require_layer(self, what: str) -> int:
        if self.layer is None:
            raise ValueError(f"{what}: the layer of {self.name!r} is unknown; pass layer=L (CLI: --layer L)")
        return self.layer

    def metadata(self) -> dict[str, Any]:
        """JSON-able description of where these weights came from (stored by every exporter)."""
        from .. import __version__

        meta: dict[str, Any] = {"exported_by": f"matryoshka-ext {__version__}", "source": self.name}
        if self.group_sizes is not None:
            meta["matryoshka_group_sizes"] = list(self.group_sizes)
            meta["matryoshka_prefix_ends"] = self.prefix_ends
        if self.k is not None:
            meta["matryoshka_k"] = int(self.k)
        if self.model_name and self.hub_model_name != self.model_name:
            meta["matryoshka_ext_model_name"] = self.model_name
        meta.update(self.extra)
        return meta

    def to(self, dtype: torch.dtype, threshold_dtype: torch.dtype | None = None) -> JumpReLUWeights:
        """A CPU copy with the weights cast to ``dtype`` (threshold to ``threshold_dtype``, default float32)."""
        cast = {n: getattr(self, n).to("cpu", dtype).contiguous() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        thr = self.threshold.to("cpu", threshold_dtype or torch.float32).contiguous()
        skip = None if self.W_skip is None else self.W_skip.to("cpu", dtype).contiguous()
        return replace(self, threshold=thr, W_skip=skip, **cast)

    def reference_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a [N, F], y [N, d_out]) in float64 by the formula above: the oracle the export tests compare to."""
        pre = x.double() @ self.W_enc.double() + self.b_enc.double()
        a = pre * (pre > self.threshold.double())
        y = a @ self.W_dec.double() + self.b_dec.double()
        return a, y if self.W_skip is None else y + x.double() @ self.W_skip.double()


def jumprelu_weights(
    transcoder: Any,
    *,
    layer: int | None = None,
    input_hook: str | None = None,
    output_hook: str | None = None,
    model_name: str | None = None,
    dtype: str | torch.dtype = torch.float32,
) -> JumpReLUWeights:
    """Reduce ``transcoder`` to ``JumpReLUWeights`` (raw units, CPU, ``dtype``; threshold float32).

    ``transcoder``: a path (anything ``mx.load_transcoder`` reads: run folder, checkpoint, save_pretrained folder,
    SAELens / Gemma Scope files), a ``MatryoshkaTranscoder``, or a loaded ``BaseTranscoder``. Sites come from the
    arguments, else from the transcoder's metadata (run config, SAELens cfg); a ``layer`` alone gives the Gemma
    Scope sites of that layer. Raises ValueError for transcoders no peer format can represent (TopK selection at
    inference, an input bias, negative thresholds). A skip matrix is kept (``W_skip``, raw units): each exporter
    writes it or refuses.
    """
    from ..loaders import BaseTranscoder, MatryoshkaAdapter, SparseTranscoder, load_transcoder
    from ..transcoder import MatryoshkaTranscoder

    if isinstance(transcoder, JumpReLUWeights):  # already reduced: only sites / dtype may change
        w = replace(transcoder, extra=dict(transcoder.extra))
        meta = {"layer": w.layer, "input_hook": w.input_hook, "output_hook": w.output_hook, "model_name": w.model_name}
        return _with_sites(w, meta, layer, input_hook, output_hook, model_name).to(dtype_from_name(dtype))
    if isinstance(transcoder, (str, os.PathLike)):
        transcoder = load_transcoder(os.fspath(transcoder))
    if isinstance(transcoder, MatryoshkaTranscoder):
        transcoder = MatryoshkaAdapter(transcoder)
    if not isinstance(transcoder, BaseTranscoder):
        raise TypeError(f"transcoder must be a path, MatryoshkaTranscoder or BaseTranscoder, got {type(transcoder)}")
    meta = dict(transcoder.meta)
    name = transcoder.name

    if isinstance(transcoder, MatryoshkaAdapter):
        model = transcoder.model
        sd = model.folded_state_dict()
        F = model.cfg.dict_size
        thr = sd["threshold"].float().reshape(()).expand(F).clone()
        w = JumpReLUWeights(
            W_enc=sd["W_enc"],
            b_enc=sd["b_enc"],
            W_dec=sd["W_dec"],
            b_dec=sd["b_dec"],
            threshold=thr,
            W_skip=sd.get("W_skip"),
            group_sizes=list(model.cfg.group_sizes),
            k=int(model.cfg.k),
            name=name,
            ours=True,
            extra={
                "matryoshka_selection": model.cfg.selection,
                "matryoshka_threshold_updates": int(model.threshold_updates),
            },
        )
        if int(model.threshold_updates) == 0:
            # never trained: threshold 0 makes the JumpReLU a plain ReLU (every positive latent fires)
            w.extra["matryoshka_threshold_untrained"] = True
    elif isinstance(transcoder, SparseTranscoder):
        w = _from_sparse(transcoder, name)
    else:
        raise TypeError(f"{type(transcoder).__name__} cannot be exported (only our transcoders and SparseTranscoder)")

    if bool((w.threshold < 0).any()):
        raise ValueError(
            f"{name}: negative JumpReLU thresholds; peers compute relu(pre) * (pre > threshold), which differs "
            "from pre * (pre > threshold) there, so the export would not reproduce this transcoder"
        )
    return _with_sites(w, meta, layer, input_hook, output_hook, model_name).to(dtype_from_name(dtype))


def _with_sites(
    w: JumpReLUWeights,
    meta: dict[str, Any],
    layer: int | None,
    input_hook: str | None,
    output_hook: str | None,
    model_name: str | None,
) -> JumpReLUWeights:
    """Set w's layer / hooks / model from the arguments, else from ``meta`` (what the files say)."""
    w.model_name = model_name or meta.get("model_name")
    if layer is None and not input_hook and not output_hook:
        layer, input_hook, output_hook = meta.get("layer"), meta.get("input_hook"), meta.get("output_hook")
    if layer is None and input_hook:
        m = re.search(r"blocks\.(\d+)\.", input_hook)
        layer = int(m.group(1)) if m else None
    if layer is not None:  # fills the missing hook(s) with the Gemma Scope sites of that layer
        from ..data.sites import sites_for

        s = sites_for(int(layer), input_hook, output_hook)
        input_hook, output_hook = s.input_hook, s.output_hook
    w.layer, w.input_hook, w.output_hook = layer, input_hook, output_hook
    return w


def _from_sparse(tc: Any, name: str) -> JumpReLUWeights:
    """A loaded SparseTranscoder (Gemma Scope, SAELens, ...) -> JumpReLUWeights, when representable."""
    if tc.activation not in ("jumprelu", "relu"):
        raise ValueError(f"{name}: activation {tc.activation!r} (top-k selection) has no JumpReLU equivalent")
    if tc.input_bias is not None:
        raise ValueError(f"{name}: an input bias (SAE apply_b_dec_to_input) is not a transcoder; not exported")
    F = tc.num_latents
    thr = torch.zeros(F) if tc.activation == "relu" else tc.threshold.float().reshape(-1).expand(F).clone()
    ends = tc.prefix_ends
    sizes = None if not ends else [b - a for a, b in zip([0] + ends[:-1], ends)]
    return JumpReLUWeights(
        W_enc=tc.W_enc.detach().cpu(),
        b_enc=tc.b_enc.detach().cpu(),
        W_dec=tc.W_dec.detach().cpu(),
        b_dec=tc.b_dec.detach().cpu(),
        threshold=thr.cpu(),
        W_skip=None if tc.W_skip is None else tc.W_skip.detach().cpu(),
        group_sizes=sizes,
        k=None,
        name=name,
        ours=str(tc.meta.get("format", "")).startswith("matryoshka"),
    )


def ensure_empty_or_new(path: str | os.PathLike, overwrite: bool, files: tuple[str, ...]) -> str:
    """Create ``path``; refuse (FileExistsError) to overwrite any of ``files`` already there unless ``overwrite``."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    clash = [f for f in files if os.path.exists(os.path.join(path, f))]
    if clash and not overwrite:
        raise FileExistsError(f"{path} already holds {clash}; pass overwrite=True (CLI: --overwrite)")
    return path
