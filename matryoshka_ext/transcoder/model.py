"""The MatryoshkaTranscoder module: parameters and buffers, the nested training forward, inference, constraints.

Initialisation lives in ``init``, the activation-scale fold in ``scaling``, the skip path in ``skip``, and
save/load in ``pretrained``; this module wires them together (see the package docstring for the conventions).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .. import auxk
from ..config import TranscoderConfig
from ..reference import acc_dtype
from ..sparse import SparseActs
from . import init as _init
from . import pretrained as _pretrained
from .output import TranscoderOutput
from .scaling import fold_scales, scaled
from .skip import skip_term, sparse_target

_FP32_BUFFERS = ("x_scale", "y_scale", "threshold")
_CPU_ROW_BLOCK = 1024  # decoder rows per block of project_decoder_grad's dot products on CPU
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def _ops():
    from .. import ops

    return ops


class MatryoshkaTranscoder(nn.Module):
    """Parameters: W_enc [d_in, F], b_enc [F], W_dec [F, d_out] (unit rows), b_dec [d_out], and with
    ``cfg.skip_connection`` W_skip [d_in, d_out] (None otherwise).

    Buffers: x_scale, y_scale, threshold (fp32 scalars), threshold_updates (int64),
    tokens_since_fired [F] (int64).
    """

    W_skip: nn.Parameter | None

    def __init__(self, cfg: TranscoderConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        cfg.validate()
        if cfg.d_in is None or cfg.d_out is None:
            raise ValueError("TranscoderConfig.d_in and d_out must be set to build a transcoder")
        self.cfg = cfg
        F, dt = cfg.dict_size, _DTYPES[cfg.dtype]
        kw = {"device": device, "dtype": dt}
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, F, **kw))
        self.b_enc = nn.Parameter(torch.zeros(F, **kw))
        self.W_dec = nn.Parameter(torch.empty(F, cfg.d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out, **kw))
        # registered last, and only when on: state dicts and optimiser states of skip-free models are unchanged
        skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out, **kw)) if cfg.skip_connection else None
        self.register_parameter("W_skip", skip)
        f32 = {"device": device, "dtype": torch.float32}
        self.register_buffer("x_scale", torch.ones((), **f32))
        self.register_buffer("y_scale", torch.ones((), **f32))
        self.register_buffer("threshold", torch.zeros((), **f32))
        self.register_buffer("threshold_updates", torch.zeros((), device=device, dtype=torch.int64))
        self.register_buffer("tokens_since_fired", torch.zeros(F, device=device, dtype=torch.int64))
        self.register_buffer("prefix_weights", torch.tensor(cfg.weights, **f32), persistent=False)
        # prefix ends as a tensor for the per-prefix L0 counts (derived from cfg; moves with the module)
        self.register_buffer(
            "group_ends_t", torch.tensor(cfg.group_ends, device=device, dtype=torch.int64), persistent=False
        )
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------------------
    # construction

    @property
    def group_ends(self) -> list[int]:
        return self.cfg.group_ends

    @property
    def num_groups(self) -> int:
        return self.cfg.num_groups

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit decoder rows, W_enc = init_encoder_scale * W_dec^T, zero biases and W_skip (``init``).
        ``initialize_from_batch`` then refines the encoder from data (do call it before training)."""
        _init.reset_parameters(self, generator)

    def initialize_from_batch(self, x: torch.Tensor, y: torch.Tensor, set_scales: bool = True) -> None:
        """Data-dependent init from raw activations x [N, d_in], y [N, d_out] (``init.initialize_from_batch``)."""
        _init.initialize_from_batch(self, x, y, set_scales)

    @torch.no_grad()
    def set_scales(self, x_scale: float | torch.Tensor, y_scale: float | torch.Tensor) -> None:
        """Set the multipliers applied to raw x and y (fp32)."""
        self.x_scale.fill_(float(x_scale))
        self.y_scale.fill_(float(y_scale))

    def _apply(self, fn: Any, recurse: bool = True) -> MatryoshkaTranscoder:
        # .to(dtype)/.half() must not round the fp32 scales and threshold: move them, keep their dtype
        keep = {n: getattr(self, n) for n in _FP32_BUFFERS if hasattr(self, n)}
        super()._apply(fn, recurse)
        for n, t in keep.items():
            moved = getattr(self, n)
            self._buffers[n] = t.to(device=moved.device, dtype=torch.float32)
        return self

    # ------------------------------------------------------------------------------------------------------
    # training forward

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        if device.type != "cpu" and torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.W_enc.dtype

    def forward(self, x: torch.Tensor, y: torch.Tensor, update_stats: bool | None = None) -> TranscoderOutput:
        """Nested training loss on raw activations x [N, d_in], y [N, d_out].

        `update_stats` (default: training mode with grad enabled) updates the dead-latent counters and the
        JumpReLU threshold after computing the loss.
        """
        cfg, ops = self.cfg, _ops()
        if x.dim() != 2 or x.shape[1] != cfg.d_in:
            raise ValueError(f"x must be [N, {cfg.d_in}], got {tuple(x.shape)}")
        if y.dim() != 2 or y.shape != (x.shape[0], cfg.d_out):
            raise ValueError(f"y must be [{x.shape[0]}, {cfg.d_out}], got {tuple(y.shape)}")
        update = (self.training and torch.is_grad_enabled()) if update_stats is None else update_stats
        dt = self._compute_dtype(x.device)
        xs = scaled(x, self.x_scale, dt)
        ys = scaled(y, self.y_scale, dt)
        W_enc, b_enc, W_dec, b_dec = (p.to(dt) for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec))
        ends = cfg.group_ends
        # skip path: the sparse part fits y' - x' @ W_skip, so every prefix's MSE includes the skip term (``skip``)
        skip = None if self.W_skip is None else skip_term(xs, self.W_skip, dt)
        target = ys if skip is None else sparse_target(ys, skip)

        dead = self.tokens_since_fired >= cfg.dead_tokens
        aux_plan = auxk.plan(dead, cfg.aux_k, cfg.aux_penalty)
        if aux_plan is None:
            acts = ops.encode(xs, W_enc, b_enc, cfg.k, mode=cfg.selection)
        else:  # one GEMM serves both selections
            acts, aux_acts = ops.encode_aux(xs, W_enc, b_enc, cfg.k, cfg.selection, aux_plan.dead, aux_plan.aux_k)
        acc = acc_dtype(dt)
        mse = ops.nested_mse(acts, W_dec, b_dec, target, ends).to(acc)
        loss = (self.prefix_weights.to(acc) * mse).sum()

        with torch.no_grad():
            det = acts.detach()
            yf = ys.to(acc)
            var = (yf - yf.mean(0)).pow(2).mean()
            fvu = mse.detach() / var.clamp_min(torch.finfo(torch.float32).tiny)
            positive = det.values > 0
            n_rows = max(x.shape[0], 1)
            l0 = positive.sum().float() / n_rows
            prefix_l0 = self._prefix_counts(det.indices, positive).float() / n_rows
            num_dead = dead.sum()

        def full_recon() -> torch.Tensor:
            """[N, d_out] full-prefix reconstruction in scaled units (acc dtype, skip term included), detached."""
            with torch.no_grad():
                r = ops.nested_decode(det, W_dec, b_dec, [cfg.dict_size])[0].to(acc)
                return r if skip is None else r + skip.detach().to(acc)

        aux = torch.zeros((), device=x.device, dtype=acc)
        recon_s = None  # decoded only when AuxK needs it or a caller reads out.recon
        if aux_plan is not None:
            recon_s = full_recon()
            residual = (yf - recon_s).to(dt)  # detached: AuxK only moves dead latents (skip term included)
            aux = cfg.aux_penalty * auxk.aux_mse(aux_acts, W_dec, aux_plan.dead, residual)
            loss = loss + aux

        if update:
            self.update_stats(det, x.shape[0])
        return TranscoderOutput(
            loss=loss,
            mse=mse,
            fvu=fvu,
            aux_loss=aux,
            l0=l0,
            prefix_l0=prefix_l0,
            recon_fn=lambda: (full_recon() if recon_s is None else recon_s) / self.y_scale.to(acc),
            acts=det,
            num_dead=num_dead,
        )

    def _prefix_counts(self, indices: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        """[m] int64: how many of the positive entries fall in each prefix (latent id < group end), in one pass."""
        ends = self.group_ends_t
        m = len(self.group_ends)
        # group of each entry's latent; entries holding 0 go to an extra bin m (no weights: deterministic on CUDA)
        group = torch.searchsorted(ends, indices.masked_fill(~positive, ends[-1]), right=True)
        return torch.bincount(group, minlength=m + 1)[:m].cumsum(0)

    @torch.no_grad()
    def update_stats(self, acts: SparseActs, n_tokens: int, sync: Any = None) -> None:
        """Dead counters: +N for every latent, reset to 0 where it fired. Threshold: EMA of the batch's
        smallest positive selected activation (no host sync).

        Data parallel: `sync(fired [F] bool, batch_min [] fp32) -> (fired, batch_min)` combines the ranks'
        values (fired anywhere, smallest anywhere) and `n_tokens` is the global batch, so every rank applies
        the update one process would make on the whole batch."""
        vals = acts.values.float()
        positive = vals > 0
        F = self.tokens_since_fired.numel()
        # entries holding 0 write into an extra slot F; repeated ids all write True, so the result is deterministic
        fired = torch.zeros(F + 1, dtype=torch.bool, device=vals.device)
        fired[acts.indices.masked_fill(~positive, F)] = True
        fired = fired[:F]
        inf = torch.full_like(vals, float("inf"))
        batch_min = torch.where(positive, vals, inf).min() if vals.numel() else inf.new_tensor(float("inf"))
        if sync is not None:
            fired, batch_min = sync(fired, batch_min)
        self.tokens_since_fired.add_(n_tokens).masked_fill_(fired, 0)
        valid = torch.isfinite(batch_min)
        mom = self.cfg.threshold_momentum
        ema = mom * self.threshold + (1 - mom) * batch_min
        new = torch.where(self.threshold_updates == 0, batch_min, ema)
        self.threshold.copy_(torch.where(valid, new, self.threshold))
        self.threshold_updates.add_(valid.to(torch.int64))

    # ------------------------------------------------------------------------------------------------------
    # decoder-norm constraint (W_skip is unconstrained)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the component of W_dec.grad parallel to each (unit) decoder row; call before the step.
        No-op when ``cfg.decoder_norm == "free"``."""
        g = self.W_dec.grad
        if g is None or self.cfg.decoder_norm == "free":
            return
        W = self.W_dec.to(acc_dtype(self.W_dec.dtype))
        # (the rows are unit norm, but divide to stay exact)
        sq_norm = torch.linalg.vector_norm(W, dim=1).square().clamp_min(1e-12)
        # Row-wise dot products. vecdot multiplies into an [rows, d] temporary first; on CPU a fresh one of
        # [F, d] costs a page fault per 4 KiB (17 ms of a step at F=32768, d=640), so it runs in row blocks whose
        # temporaries the allocator reuses.
        F = W.shape[0]
        block = F if W.device.type != "cpu" else _CPU_ROW_BLOCK
        coef = W.new_empty(F)
        for i in range(0, F, block):
            torch.linalg.vecdot(g[i : i + block].to(W.dtype), W[i : i + block], dim=1, out=coef[i : i + block])
        coef /= sq_norm
        if g.dtype == W.dtype:
            g.addcmul_(coef.unsqueeze(1), W, value=-1)
        else:
            g.sub_((coef.unsqueeze(1) * W).to(g.dtype))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm; call after the step. No-op when ``cfg.decoder_norm == "free"``
        (``fold_decoder_norms`` brings such a model to unit rows without changing its output)."""
        if self.cfg.decoder_norm == "free":
            return
        W = self.W_dec
        W.div_(W.to(acc_dtype(W.dtype)).norm(dim=1, keepdim=True).clamp_min(1e-12).to(W.dtype))

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Decoder rows to unit norm with each row's norm folded into its encoder column and bias: every latent's
        contribution a_f W_dec[f] is unchanged (the JumpReLU threshold is not: recalibrate it afterwards)."""
        norm = self.W_dec.float().norm(dim=1).clamp_min(1e-12)
        self.W_dec.div_(norm[:, None].to(self.W_dec.dtype))
        self.W_enc.mul_(norm[None, :].to(self.W_enc.dtype))
        self.b_enc.mul_(norm.to(self.b_enc.dtype))

    # ------------------------------------------------------------------------------------------------------
    # inference

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[N, F] x_scaled @ W_enc + b_enc (scaled units)."""
        dt = self._compute_dtype(x.device)
        return torch.addmm(self.b_enc.to(dt), scaled(x, self.x_scale, dt), self.W_enc.to(dt))

    def encode(self, x: torch.Tensor, mode: str = "jumprelu") -> SparseActs:
        """Sparse latents of raw x [N, d_in].

        mode "jumprelu" (inference): a_f = pre_f where pre_f > threshold (fp32), else 0.
        mode "batch" / "row": the training selection (BatchTopK over the batch / TopK per row).
        """
        pre = self.pre_activations(x)
        if mode == "jumprelu":
            return SparseActs.from_dense(pre * (pre.float() > self.threshold))
        if mode == "batch":
            return _ops().batch_topk(pre, self.cfg.k)
        if mode == "row":
            return _ops().topk(pre, self.cfg.k)
        raise ValueError(f"mode must be 'jumprelu', 'batch' or 'row', got {mode!r}")

    def decode(self, acts: SparseActs | torch.Tensor, prefix: int | None = None) -> torch.Tensor:
        """[N, d_out] decoder output in raw units from the first `prefix` groups (1..m; None = all).

        `acts` is a SparseActs or a dense [N, F] tensor in scaled units (as returned by `encode`). The skip term
        is not included (it needs x): ``reconstruct`` adds it, or add ``skip(x)`` yourself."""
        m, F = self.num_groups, self.cfg.dict_size
        prefix = m if prefix is None else prefix
        if not isinstance(prefix, int) or not 1 <= prefix <= m:
            raise ValueError(f"prefix must be an integer in [1, {m}], got {prefix!r}")
        if isinstance(acts, torch.Tensor):
            if acts.dim() != 2 or acts.shape[1] != F:
                raise ValueError(f"acts must be [N, {F}], got {tuple(acts.shape)}")
            acts = SparseActs.from_dense(acts)
        e = self.group_ends[prefix - 1]
        ends = [F] if e == F else [e, F]  # the op wants the last end == F
        W_dec, b_dec = self.W_dec, self.b_dec
        acts = SparseActs(acts.values.to(W_dec.dtype), acts.indices, acts.row_offsets, acts.num_latents)
        r = _ops().nested_decode(acts, W_dec, b_dec, ends)[0]
        acc = acc_dtype(W_dec.dtype)
        return (r.to(acc) / self.y_scale.to(acc)).to(W_dec.dtype)

    def skip_scaled(self, x: torch.Tensor) -> torch.Tensor | None:
        """[N, d_out] skip term x_scaled @ W_skip in scaled units (W_skip's dtype) for raw x [N, d_in], or None
        without a skip connection."""
        if self.W_skip is None:
            return None
        dt = self.W_skip.dtype
        return skip_term(scaled(x, self.x_scale, dt), self.W_skip, dt)

    def skip(self, x: torch.Tensor) -> torch.Tensor | None:
        """[N, d_out] skip term in raw units for raw x [N, d_in] (what ``reconstruct`` adds to ``decode``), or None."""
        s = self.skip_scaled(x)
        if s is None:
            return None
        acc = acc_dtype(s.dtype)
        return (s.to(acc) / self.y_scale.to(acc)).to(s.dtype)

    def reconstruct(self, x: torch.Tensor, prefix: int | None = None, mode: str = "jumprelu") -> torch.Tensor:
        """decode(encode(x, mode), prefix) + skip(x): [N, d_in] -> [N, d_out] in raw units."""
        out = self.decode(self.encode(x, mode), prefix)
        s = self.skip(x)
        return out if s is None else out + s.to(out.dtype)

    def dead_mask(self) -> torch.Tensor:
        """[F] bool: latents that have not fired for >= dead_tokens tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens

    # ------------------------------------------------------------------------------------------------------
    # save / load (safetensors + config.json; no pickle)

    @torch.no_grad()
    def folded_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights with the activation scales folded in, so they run on raw activations (scales become 1):
        see ``scaling`` for the formulas (W_skip' = W_skip * x_scale / y_scale)."""
        return fold_scales(self.state_dict())

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write `model.safetensors` (folded weights) and `config.json` to `directory`; returns the folder."""
        return _pretrained.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: torch.device | str | None = None
    ) -> MatryoshkaTranscoder:
        """Load a folder written by `save_pretrained`."""
        return _pretrained.from_pretrained(cls, directory, device)
