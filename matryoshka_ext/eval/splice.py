"""Spliced-in next-token loss: run the language model with the MLP output replaced by a transcoder's prediction.

For a batch of token contexts [B, T] and one pair of ``Sites`` (input ``blocks.L.ln2.hook_normalized``, output
``blocks.L.hook_mlp_out``; from ``data.sites``) each *variant* is one forward pass with TransformerLens hooks:

* clean: no intervention (also captures x and y for the fidelity metrics on the same forward);
* zero ablation: y := 0;
* mean ablation: y := mean of the clean y over this batch's kept positions (a per-batch estimate of E[y]);
* transcoder T, prefix i: a hook on the input site stores x and the output hook replaces y by
  ``T.reconstruct(x, prefix=i)``, computed on the same forward.

Positions holding an excluded token (BOS, pad) are never replaced and never scored: they are the attention
sink, the transcoders were not trained there, and Gemma's BOS activations are outliers. A prediction at
position t (of token t+1) is scored when tokens t and t+1 are both kept.

Per variant we accumulate (float64): CE = mean -log p(token_{t+1}), and KL(clean || variant) =
mean sum_v p_clean(v) (log p_clean(v) - log p_variant(v)). Summaries:
delta CE = CE_variant - CE_clean; CE loss recovered vs ablation A = (CE_A - CE_variant) / (CE_A - CE_clean).

Uncertainty (``SpliceStats.paired``): every variant is scored on the same predictions, so a difference of two mean
CEs (delta CE = variant - clean, or prefix i+1 - prefix i) is the mean of per-prediction differences d_t, and its
standard error is a paired one. Predictions of one context share its text and, after the splice, its residual
stream, so they are not independent: the reported SE is clustered by context (the usual sandwich estimate,
G/(G-1) sum_c (sum_{t in c} (d_t - mean d))^2 / n^2 over the G contexts), which is what decides "within noise";
the i.i.d.-token SE sd(d)/sqrt(n) is kept beside it (smaller whenever errors correlate within a context).

How (``LogitScorer``): a forward stops at the final residual stream and only the scored rows [S, d] are
unembedded, into reused buffers (in row chunks of at most ``max_elements`` logits). CE and KL come from
logsumexp: with z the logits, lse = logsumexp(z), p = softmax(z_clean),

    CE_row = lse - z[target],    KL_row = sum p z_clean - lse_clean - (sum p z - lse) (sum p = 1),

(each z shifted by its row maximum first, for float32 accuracy),
so the clean pass keeps one [S, V] float32 array (p) and each variant needs a GEMM, one dot product per row
and one logsumexp, with no [B, T, V] logits, log-softmax or product copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data.sites import Sites

Replace = Callable[[torch.Tensor], torch.Tensor]  # x at kept positions [S, d_in] -> new y [S, d_out]


def scored_positions(keep: torch.Tensor) -> torch.Tensor:
    """keep [B, T] bool -> [B, T-1] bool: predictions t -> t+1 with both tokens kept."""
    return keep[:, :-1] & keep[:, 1:]


class SpliceStats:
    """Float64 sums of CE and KL(clean || variant) per variant key, and the per-prediction CEs (float64, CPU) with
    the context of each prediction, for paired standard errors (``paired``)."""

    def __init__(self) -> None:
        self.ce: dict[Any, float] = {}
        self.kl: dict[Any, float] = {}
        self.n: dict[Any, int] = {}
        self.rows: dict[Any, list[torch.Tensor]] = {}  # per key: per-batch CE [S] in the order of the clean rows
        self.contexts: list[torch.Tensor] = []  # per batch: context id of each clean row (global numbering)
        self.n_contexts = 0

    def add(
        self,
        key: Any,
        ce: torch.Tensor,
        kl: torch.Tensor | None,
        contexts: torch.Tensor | None = None,
        batch_contexts: int | None = None,
    ) -> None:
        """Per-row CE [S] and KL [S] of one variant on one batch (kl None: the clean run, KL 0).

        ``contexts`` [S] (the clean call only): index of each row's context within the batch of ``batch_contexts``;
        without it every row counts as its own context (i.i.d. rows)."""
        self.ce[key] = self.ce.get(key, 0.0) + float(ce.double().sum())
        self.kl[key] = self.kl.get(key, 0.0) + (float(kl.double().sum()) if kl is not None else 0.0)
        self.n[key] = self.n.get(key, 0) + int(ce.numel())
        self.rows.setdefault(key, []).append(ce.detach().double().cpu().reshape(-1))
        if kl is None:
            if contexts is None:
                contexts, batch_contexts = torch.arange(ce.numel()), int(ce.numel())
            self.contexts.append(contexts.detach().cpu().long().reshape(-1) + self.n_contexts)
            if batch_contexts is None:
                batch_contexts = int(contexts.max()) + 1 if contexts.numel() else 0
            self.n_contexts += int(batch_contexts)

    def per_row(self, key: Any) -> torch.Tensor:
        """Every scored prediction's CE of one variant [n] (float64), in the clean run's row order."""
        return torch.cat(self.rows[key]) if self.rows.get(key) else torch.zeros(0, dtype=torch.float64)

    def paired(self, a: Any, b: Any) -> dict[str, float]:
        """mean(CE_a - CE_b) over the shared predictions with its paired SEs: ``se`` clustered by context,
        ``se_iid`` treating predictions as independent; ``n`` predictions, ``contexts`` clusters."""
        d = self.per_row(a) - self.per_row(b)
        n = int(d.numel())
        if n == 0:
            return {"diff": float("nan"), "se": float("nan"), "se_iid": float("nan"), "n": 0, "contexts": 0}
        mean = d.mean()
        se_iid = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
        ctx = torch.cat(self.contexts) if self.contexts else torch.arange(n)
        _, ctx = torch.unique(ctx, return_inverse=True)
        sums = torch.zeros(int(ctx.max()) + 1, dtype=torch.float64).index_add_(0, ctx, d - mean)
        g = int(sums.numel())
        se = float(torch.sqrt(g / (g - 1) * (sums**2).sum()) / n) if g > 1 else float("nan")
        return {"diff": float(mean), "se": se, "se_iid": se_iid, "n": n, "contexts": g}

    def mean_ce(self, key: Any) -> float:
        return self.ce[key] / max(self.n[key], 1)

    def mean_kl(self, key: Any) -> float:
        return self.kl[key] / max(self.n[key], 1)

    def summary(self, key: Any) -> dict[str, float]:
        """CE, delta CE, CE loss recovered (vs zero / mean ablation) and KL of one variant."""
        ce, clean = self.mean_ce(key), self.mean_ce("clean")
        out = {"ce": ce, "delta_ce": ce - clean, "kl": self.mean_kl(key)}
        for abl in ("zero", "mean"):
            ce_a = self.mean_ce(abl)
            denom = ce_a - clean
            out[f"ce_recovered_{abl}"] = (ce_a - ce) / denom if denom != 0 else float("nan")
        return out


def _hooks(sites: Sites, keep: torch.Tensor, replace: Replace) -> list[tuple[str, Callable]]:
    """Forward hooks that store x at the input site and overwrite y at kept positions with replace(x)."""
    store: dict[str, torch.Tensor] = {}

    def save_x(act: torch.Tensor, hook: Any) -> torch.Tensor:
        store["x"] = act
        return act

    def put_y(act: torch.Tensor, hook: Any) -> torch.Tensor:
        new = replace(store["x"][keep])
        out = act.clone()
        out[keep] = new.to(act.dtype)
        return out

    return [(sites.input_hook, save_x), (sites.output_hook, put_y)]


def resid_hook(sites: Sites) -> str:
    """The residual stream entering the transcoded block (where intervened forwards restart)."""
    return f"blocks.{sites.layer}.hook_resid_pre"


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[r, V] . [r, V] -> [r] without an [r, V] product (a batched GEMV)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2))[:, 0, 0]


class LogitScorer:
    """Per-row CE and KL(clean || variant) from final residual streams at the scored positions.

    Holds one TransformerLens model's final norm and unembedding (``W_U`` [d, V], ``b_U``, the output soft-cap)
    and buffers reused across calls. ``clean(h, targets)`` with h [S, d] (``final_rows``) keeps the clean
    softmax p [S, V] and returns CE [S]; ``variant(h)`` returns (CE [S], KL [S]) on the same rows. The GEMM
    runs in the model's dtype, as the model's own unembed does; reductions are in float32 (float64 for a
    float64 model), over row chunks of at most ``max_elements`` logits.
    """

    def __init__(self, model: Any, max_elements: int = 1 << 26) -> None:
        self.W = model.unembed.W_U
        self.b = model.unembed.b_U
        self.ln_final = model.ln_final if getattr(model.cfg, "normalization_type", None) is not None else None
        cap = getattr(model.cfg, "output_logits_soft_cap", None)
        self.cap = float(cap) if cap is not None and cap > 0 else None
        self.vocab = int(self.W.shape[1])
        self.rows = max(1, max_elements // self.vocab)
        self.acc = torch.float64 if self.W.dtype == torch.float64 else torch.float32
        self._z: torch.Tensor | None = None  # [rows, V] logits in the model's dtype (when it is not acc)
        self._buf: torch.Tensor | None = None  # [rows, V] logits in acc, then exp(z - max) in place
        self._p: torch.Tensor | None = None  # [>= S, V] clean softmax
        self._n = 0  # rows of the last clean call
        self._negent: torch.Tensor | None = None  # [S] sum_v p log p of the clean run
        self._psum: torch.Tensor | None = None  # [S] sum_v p (1 up to rounding; kept so KL is exact algebra)
        self._targets: torch.Tensor | None = None

    def final_rows(self, resid: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """Final residual stream [B, T, d] -> the normalized rows that predict a scored token [S, d]."""
        h = resid[:, :-1][scored]
        return self.ln_final(h) if self.ln_final is not None else h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [r, d] -> logits [r, V] in acc (a view of the reused buffer; r <= self.rows)."""
        r = h.shape[0]
        if self._buf is None or self._buf.shape[0] < r or self._buf.device != h.device:
            self._buf = torch.empty(r, self.vocab, dtype=self.acc, device=h.device)
            if self.W.dtype != self.acc:
                self._z = torch.empty(r, self.vocab, dtype=self.W.dtype, device=h.device)
        buf = self._buf[:r]
        if self._z is None:
            torch.addmm(self.b.to(self.acc), h.to(self.acc), self.W, out=buf)
        else:
            z = self._z[:r]
            torch.addmm(self.b, h.to(self.W.dtype), self.W, out=z)
            buf.copy_(z)
        if self.cap is not None:
            buf.div_(self.cap).tanh_().mul_(self.cap)
        return buf

    @staticmethod
    def _shift(z: torch.Tensor) -> None:
        """z -= rowmax(z) in place: log-probs are z - log(sum exp z), and the dot products below then sum small
        terms where p is large (float32 sums of p * z over 262k raw logits of ~30 lost ~1e-3 of KL)."""
        z.sub_(z.amax(-1, keepdim=True))

    @torch.no_grad()
    def clean(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Clean rows h [S, d], next tokens [S] -> CE [S]; keeps p, sum p log p and sum p for `variant`."""
        S = h.shape[0]
        if self._p is None or self._p.shape[0] < S or self._p.device != h.device:
            self._p = torch.empty(S, self.vocab, dtype=self.acc, device=h.device)
        ce = torch.empty(S, dtype=self.acc, device=h.device)
        negent, psum = torch.empty_like(ce), torch.empty_like(ce)
        for i in range(0, S, self.rows):
            z = self._logits(h[i : i + self.rows])
            r = z.shape[0]
            p = self._p[i : i + r]
            self._shift(z)
            torch.exp(z, out=p)
            log_s = p.sum(-1).log_()  # logsumexp of the shifted logits
            p.div_(p.sum(-1, keepdim=True))
            psum[i : i + r] = p.sum(-1)
            negent[i : i + r] = _rowdot(p, z) - log_s * psum[i : i + r]  # sum p (z - lse)
            ce[i : i + r] = log_s - z.gather(1, targets[i : i + r, None])[:, 0]
        self._n, self._negent, self._psum, self._targets = S, negent, psum, targets
        return ce

    @torch.no_grad()
    def variant(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Intervened rows h [S, d] (the same rows as the last `clean` call) -> (CE [S], KL(clean || this) [S])."""
        if self._targets is None or h.shape[0] != self._n:
            raise ValueError(f"variant rows ({h.shape[0]}) must match the last clean call ({self._n})")
        ce = torch.empty(self._n, dtype=self.acc, device=h.device)
        kl = torch.empty_like(ce)
        for i in range(0, self._n, self.rows):
            z = self._logits(h[i : i + self.rows])
            r = z.shape[0]
            self._shift(z)
            zt = z.gather(1, self._targets[i : i + r, None])[:, 0]
            cross = _rowdot(self._p[i : i + r], z)  # sum p_clean z_variant, before z is overwritten
            log_s = z.exp_().sum(-1).log_()
            ce[i : i + r] = log_s - zt
            kl[i : i + r] = self._negent[i : i + r] - (cross - log_s * self._psum[i : i + r])
        return ce, kl


@torch.no_grad()
def clean_forward(model: Any, sites: Sites, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward up to the final residual stream [B, T, d] (no unembedding), with {"x", "y", "resid"}
    captured by hooks ([B, T, d] each)."""
    store: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            store[name] = act.detach()
            return act

        return fn

    hooks = [(sites.input_hook, grab("x")), (sites.output_hook, grab("y")), (resid_hook(sites), grab("resid"))]
    final = model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
    return final, store


@torch.no_grad()
def splice_batch(
    model: Any,
    sites: Sites,
    tokens: torch.Tensor,
    keep: torch.Tensor,
    variants: Sequence[tuple[Any, Replace]],
    stats: SpliceStats,
    from_layer: bool = True,
    scorer: LogitScorer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score the clean run, zero and mean ablation and every ``(key, replace)`` variant on one batch.

    tokens, keep [B, T]. With ``from_layer`` the intervened forwards restart from the clean residual stream
    entering block L (``start_at_layer``): blocks before L cannot see the change, so this only skips
    recomputing them (bit-identical logits; checked in the tests). ``scorer``: a `LogitScorer` of this model
    to reuse across batches (its buffers), else a new one. Returns the clean (x, y) [B, T, d] so callers can
    reuse the forward for fidelity metrics.
    """
    scorer = scorer or LogitScorer(model)
    final, store = clean_forward(model, sites, tokens)
    x, y = store["x"], store["y"]
    scored = scored_positions(keep)
    targets = tokens[:, 1:][scored]
    if targets.numel() == 0:
        return x, y
    rows_ctx = scored.nonzero()[:, 0]  # context of each scored row (row-major, the order of final_rows)
    stats.add("clean", scorer.clean(scorer.final_rows(final, scored), targets), None, rows_ctx, tokens.shape[0])
    del final
    y_mean = y[keep].float().mean(0)
    d_out = y.shape[-1]

    def zero(xk: torch.Tensor) -> torch.Tensor:
        return xk.new_zeros(xk.shape[0], d_out)

    def mean(xk: torch.Tensor) -> torch.Tensor:
        return y_mean.expand(xk.shape[0], d_out)

    # A restart from the residual stream carries no attention mask: with left padding in the batch TransformerLens
    # masks pads (and shifts positions) only in a forward from tokens, so take the full forward then.
    tok = getattr(model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None)
    if from_layer and pad is not None and pad != getattr(tok, "bos_token_id", None) and bool((tokens == pad).any()):
        from_layer = False
    start = {"start_at_layer": sites.layer} if from_layer else {}
    inp = store["resid"] if from_layer else tokens
    for key, replace in [("zero", zero), ("mean", mean), *variants]:
        out = model.run_with_hooks(
            inp, fwd_hooks=_hooks(sites, keep, replace), stop_at_layer=model.cfg.n_layers, **start
        )
        stats.add(key, *scorer.variant(scorer.final_rows(out, scored)))
        del out
    return x, y
