"""MatryoshkaTranscoder: a sparse transcoder x [d_in] -> y [d_out] whose latents form nested groups.

Training (``forward``) selects with BatchTopK (or per-row TopK) through ``mx.encode`` and trains every prefix
at once with ``mx.nested_mse``:  loss = sum_i w_i * mse_i + aux.

Conventions (documented choices):
- Activation scaling ("unit_mean_squared_norm"): x and y are multiplied by fp32 scalars x_scale, y_scale so
  that E||x||^2 = E||y||^2 = 1 on the training data. Losses and latent activations live in these scaled units.
  ``save_pretrained`` folds the scales into the weights (into the encoder side and b_dec, so decoder rows
  stay unit-norm) and writes scales 1, so a saved transcoder runs on raw activations.
- FVU of prefix i: sum_{n,d} (r_i - y)^2 / sum_{n,d} (y - mean_n y)^2 on the batch (per-dimension variance
  of y around its batch mean, summed over dimensions) == mse_i / mean((y - ybar)^2).
- AuxK (Gao et al. 2024): latents that have not fired for >= dead_tokens tokens are "dead". Among them the
  top aux_k relu(pre-activations) per token reconstruct the detached residual e = y - r_full (no decoder
  bias). aux = aux_penalty * mean((e_hat - e)^2): the same units as each prefix's MSE term (not divided by
  the residual's variance), so aux_penalty is its weight relative to one prefix term, as in the paper.
- JumpReLU threshold (inference): one global fp32 theta, an EMA (``threshold_momentum``) of the smallest
  positive selected activation of each training batch; the first update sets it directly.
- Dead-latent counters (``tokens_since_fired``, int64) and the threshold are persistent buffers; they
  change only in training mode with gradients enabled (or ``update_stats=True``), never in metric passes.
- Decoder rows have unit norm: ``project_decoder_grad`` removes the radial gradient component before the
  optimiser step, ``normalize_decoder`` renormalises after it.
- Init: random unit decoder rows, b_dec = target mean, and (``initialize_from_batch``) an encoder that starts
  useful: W_enc = s * W_lin @ W_dec^T (W_lin: least-squares map x -> y on the first batch; the transcoder
  analogue of the SAE init W_dec^T), centred by b_enc = -mean(x) @ W_enc, with s fitted in closed form.
  With W_enc = W_dec^T a transcoder's initial output is noise, every latent is pushed below zero and most
  die (Gemma 3 270M layer 12: 73% dead vs 2% after 300 steps). ``init_encoder="transpose"`` keeps W_dec^T.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import auxk
from .config import TranscoderConfig
from .sparse import SparseActs

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "matryoshka-ext-transcoder"
_FP32_BUFFERS = ("x_scale", "y_scale", "threshold")


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ops():
    from . import ops

    return ops


_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass
class TranscoderOutput:
    """Result of ``MatryoshkaTranscoder.forward`` on a batch of N tokens with m prefixes.

    loss      []          sum_i w_i * mse_i + aux_loss (differentiable)
    mse       [m]  fp32   per-prefix mean squared error (scaled units; differentiable)
    fvu       [m]  fp32   per-prefix fraction of variance unexplained (detached)
    aux_loss  []   fp32   aux_penalty * AuxK MSE (differentiable; 0 when no latent is dead)
    l0        []   fp32   mean number of positive activations per token
    prefix_l0 [m]  fp32   the same, counting only latents of prefix i
    recon     [N, d_out]  full-prefix reconstruction in the caller's (raw) units (detached)
    acts      SparseActs  selected activations (detached, scaled units)
    num_dead  []   int64  latents dead before this step
    """

    loss: torch.Tensor
    mse: torch.Tensor
    fvu: torch.Tensor
    aux_loss: torch.Tensor
    l0: torch.Tensor
    prefix_l0: torch.Tensor
    recon: torch.Tensor
    acts: SparseActs
    num_dead: torch.Tensor


class MatryoshkaTranscoder(nn.Module):
    """Parameters: W_enc [d_in, F], b_enc [F], W_dec [F, d_out] (unit rows), b_dec [d_out].

    Buffers: x_scale, y_scale, threshold (fp32 scalars), threshold_updates (int64),
    tokens_since_fired [F] (int64).
    """

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
        f32 = {"device": device, "dtype": torch.float32}
        self.register_buffer("x_scale", torch.ones((), **f32))
        self.register_buffer("y_scale", torch.ones((), **f32))
        self.register_buffer("threshold", torch.zeros((), **f32))
        self.register_buffer("threshold_updates", torch.zeros((), device=device, dtype=torch.int64))
        self.register_buffer("tokens_since_fired", torch.zeros(F, device=device, dtype=torch.int64))
        self.register_buffer("prefix_weights", torch.tensor(cfg.weights, **f32), persistent=False)
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------------------
    # construction

    @property
    def group_ends(self) -> list[int]:
        return self.cfg.group_ends

    @property
    def num_groups(self) -> int:
        return self.cfg.num_groups

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit decoder rows; W_enc = init_encoder_scale * W_dec^T (random columns when d_in != d_out).
        `initialize_from_batch` then refines the encoder from data (do call it before training).

        Uses the global RNG unless a CPU `generator` is given.
        """
        cfg = self.cfg
        W = torch.randn(cfg.dict_size, cfg.d_out, generator=generator, dtype=torch.float32)
        W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec.copy_(W)
        if cfg.d_in == cfg.d_out:
            E = W.t().clone()
        else:
            E = torch.randn(cfg.d_in, cfg.dict_size, generator=generator, dtype=torch.float32)
            E /= E.norm(dim=0, keepdim=True).clamp_min(1e-12)
        self.W_enc.copy_(E * cfg.init_encoder_scale)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def initialize_from_batch(self, x: torch.Tensor, y: torch.Tensor, set_scales: bool = True) -> None:
        """Data-dependent init from raw activations x [N, d_in], y [N, d_out] (call after reset_parameters).

        1. activation scales (when the config scales activations and `set_scales`);
        2. b_dec = mean of the scaled target;
        3. encoder directions E (``init_encoder``): "linear" sets E = W_lin @ W_dec^T, W_lin the ridge
           least-squares map from centred x to centred y, so each latent starts by reading the projection of
           the linearly predicted target onto its own decoder row (for y = x this is the SAE init W_dec^T);
           "transpose" keeps E = W_dec^T. A random decoder with an unrelated encoder starts as pure noise:
           every latent is then pushed below zero and most die within a few dozen steps;
        4. b_enc = -mean(x) @ E (latents read centred inputs), and E, b_enc are scaled by the s > 0 that
           minimises sum_i w_i ||r_i - y||^2 on this batch (closed form: positive scaling keeps the
           selection), times ``init_encoder_scale``.
        """
        cfg = self.cfg
        if set_scales and cfg.activation_scaling != "none":
            per_dim = cfg.activation_scaling == "unit_rms"
            self.set_scales(
                mean_squared_norm_scale(x, x.shape[1] if per_dim else 1),
                mean_squared_norm_scale(y, y.shape[1] if per_dim else 1),
            )
        f64 = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        xs = x.to(f64) * self.x_scale.to(f64)
        ys = y.to(f64) * self.y_scale.to(f64)
        x_mean, y_mean = xs.mean(0), ys.mean(0)
        self.b_dec.copy_(y_mean)
        W_dec = self.W_dec.to(f64)
        if cfg.init_encoder == "linear":
            xc, yc = xs - x_mean, ys - y_mean
            gram = xc.T @ xc
            ridge = 1e-3 * gram.diagonal().mean().clamp_min(1e-12)
            eye = torch.eye(gram.shape[0], dtype=f64, device=gram.device)
            W_lin = torch.linalg.solve(gram + ridge * eye, xc.T @ yc)  # [d_in, d_out]
            E = W_lin @ W_dec.T
        else:
            E = self.W_enc.to(f64) / cfg.init_encoder_scale  # reset_parameters' W_dec^T (or random columns)
        b = -(x_mean @ E)
        # fit the overall scale s: r_i(s) - b_dec = s * R_i, so s = sum_i w_i <R_i, yc> / sum_i w_i |R_i|^2
        dt = self.W_enc.dtype if self.W_enc.dtype != torch.float16 else torch.float32
        acts = _ops().encode(xs.to(dt), E.to(dt), b.to(dt), cfg.k, mode=cfg.selection)
        zero = torch.zeros(cfg.d_out, dtype=dt, device=x.device)
        R = _ops().nested_decode(acts, W_dec.to(dt), zero, cfg.group_ends).to(f64)  # [m, N, d_out]
        w = torch.tensor(cfg.weights, dtype=f64, device=x.device)
        num = (w * (R * (ys - y_mean)).sum(dim=(1, 2))).sum()
        den = (w * R.pow(2).sum(dim=(1, 2))).sum()
        s = float(num / den) if float(den) > 0 and float(num) > 0 else 1.0
        s *= cfg.init_encoder_scale
        self.W_enc.copy_(E * s)
        self.b_enc.copy_(b * s)

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

    def _scaled(self, t: torch.Tensor, scale: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
        acc = _acc(dt)
        return (t.to(acc) * scale.to(acc)).to(dt)

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
        xs = self._scaled(x, self.x_scale, dt)
        ys = self._scaled(y, self.y_scale, dt)
        W_enc, b_enc, W_dec, b_dec = (p.to(dt) for p in (self.W_enc, self.b_enc, self.W_dec, self.b_dec))
        ends = cfg.group_ends

        dead = self.tokens_since_fired >= cfg.dead_tokens
        aux_plan = auxk.plan(dead, cfg.aux_k, cfg.aux_penalty)
        if aux_plan is None:
            acts = ops.encode(xs, W_enc, b_enc, cfg.k, mode=cfg.selection)
        else:  # one GEMM serves both selections
            acts, aux_acts = ops.encode_aux(xs, W_enc, b_enc, cfg.k, cfg.selection, aux_plan.dead, aux_plan.aux_k)
        acc = _acc(dt)
        mse = ops.nested_mse(acts, W_dec, b_dec, ys, ends).to(acc)
        loss = (self.prefix_weights.to(acc) * mse).sum()

        with torch.no_grad():
            det = acts.detach()
            recon_s = ops.nested_decode(det, W_dec, b_dec, [cfg.dict_size])[0].to(acc)
            yf = ys.to(acc)
            var = (yf - yf.mean(0)).pow(2).mean()
            fvu = mse.detach() / var.clamp_min(torch.finfo(torch.float32).tiny)
            positive = det.values > 0
            l0 = positive.sum().float() / max(x.shape[0], 1)
            fired = det.indices[positive]
            prefix_l0 = torch.stack([(fired < e).sum() for e in ends]).float() / max(x.shape[0], 1)
            num_dead = dead.sum()

        aux = torch.zeros((), device=x.device, dtype=acc)
        if aux_plan is not None:
            residual = (yf - recon_s).to(dt)  # detached: AuxK only moves dead latents
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
            recon=recon_s / self.y_scale.to(acc),
            acts=det,
            num_dead=num_dead,
        )

    @torch.no_grad()
    def update_stats(self, acts: SparseActs, n_tokens: int, sync: Any = None) -> None:
        """Dead counters: +N for every latent, reset to 0 where it fired. Threshold: EMA of the batch's
        smallest positive selected activation (no host sync).

        Data parallel: `sync(fired [F] bool, batch_min [] fp32) -> (fired, batch_min)` combines the ranks'
        values (fired anywhere, smallest anywhere) and `n_tokens` is the global batch, so every rank applies
        the update one process would make on the whole batch."""
        vals = acts.values.float()
        positive = vals > 0
        fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
        fired[acts.indices[positive]] = True
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
    # decoder-norm constraint

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the component of W_dec.grad parallel to each (unit) decoder row; call before the step."""
        g = self.W_dec.grad
        if g is None:
            return
        W = self.W_dec.to(_acc(self.W_dec.dtype))
        coef = (g.to(W.dtype) * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
        g.sub_((coef * W).to(g.dtype))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm; call after the step."""
        W = self.W_dec
        W.div_(W.to(_acc(W.dtype)).norm(dim=1, keepdim=True).clamp_min(1e-12).to(W.dtype))

    # ------------------------------------------------------------------------------------------------------
    # inference

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """[N, F] x_scaled @ W_enc + b_enc (scaled units)."""
        dt = self._compute_dtype(x.device)
        return torch.addmm(self.b_enc.to(dt), self._scaled(x, self.x_scale, dt), self.W_enc.to(dt))

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
        """[N, d_out] reconstruction in raw units from the first `prefix` groups (1..m; None = all).

        `acts` is a SparseActs or a dense [N, F] tensor in scaled units (as returned by `encode`)."""
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
        acc = _acc(W_dec.dtype)
        return (r.to(acc) / self.y_scale.to(acc)).to(W_dec.dtype)

    def reconstruct(self, x: torch.Tensor, prefix: int | None = None, mode: str = "jumprelu") -> torch.Tensor:
        """decode(encode(x, mode), prefix): [N, d_in] -> [N, d_out] in raw units."""
        return self.decode(self.encode(x, mode), prefix)

    def dead_mask(self) -> torch.Tensor:
        """[F] bool: latents that have not fired for >= dead_tokens tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens

    # ------------------------------------------------------------------------------------------------------
    # save / load (safetensors + config.json; no pickle)

    @torch.no_grad()
    def folded_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights with the activation scales folded in, so they run on raw activations (scales become 1).

        Activations a' = a / y_scale: W_enc' = W_enc * x_scale / y_scale, b_enc' = b_enc / y_scale,
        threshold' = threshold / y_scale, b_dec' = b_dec / y_scale, W_dec unchanged (unit rows)."""
        sx, sy = self.x_scale.double(), self.y_scale.double()
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()}
        for name, factor in (("W_enc", sx / sy), ("b_enc", 1 / sy), ("b_dec", 1 / sy)):
            sd[name] = (sd[name].double() * factor).to(sd[name].dtype)
        sd["threshold"] = (sd["threshold"].double() / sy).float()
        sd["x_scale"] = torch.ones_like(sd["x_scale"])
        sd["y_scale"] = torch.ones_like(sd["y_scale"])
        return sd

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write `model.safetensors` (folded weights) and `config.json` to `directory`; returns the folder."""
        from safetensors.torch import save_file

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        cfg = self.cfg.replace(activation_scaling="none")
        sd = {k: v.contiguous().cpu() for k, v in self.folded_state_dict().items()}
        save_file(sd, os.path.join(directory, WEIGHTS_NAME), metadata={"format": FORMAT})
        with open(os.path.join(directory, CONFIG_NAME), "w") as fh:
            json.dump({"format": FORMAT, "version": 1, **cfg.to_dict()}, fh, indent=2)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: torch.device | str | None = None
    ) -> MatryoshkaTranscoder:
        """Load a folder written by `save_pretrained`."""
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


def mean_squared_norm_scale(t: torch.Tensor, target: float = 1.0) -> float:
    """The scalar s with mean_n ||s * t_n||^2 = target for t [N, d] (fp64 accumulation)."""
    ms = t.double().pow(2).sum(1).mean().item()
    if not ms > 0:
        raise ValueError("cannot scale activations whose mean squared norm is 0")
    return (target / ms) ** 0.5
