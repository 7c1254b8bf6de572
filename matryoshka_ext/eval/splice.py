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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data.sites import Sites

Replace = Callable[[torch.Tensor], torch.Tensor]  # x at kept positions [S, d_in] -> new y [S, d_out]


def scored_positions(keep: torch.Tensor) -> torch.Tensor:
    """keep [B, T] bool -> [B, T-1] bool: predictions t -> t+1 with both tokens kept."""
    return keep[:, :-1] & keep[:, 1:]


def _log_probs_at(logits: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V] -> float32 log-probabilities [S, V] of the scored predictions."""
    return torch.log_softmax(logits[:, :-1][scored].float(), dim=-1)


class SpliceStats:
    """Float64 sums of CE and KL(clean || variant) per variant key."""

    def __init__(self) -> None:
        self.ce: dict[Any, float] = {}
        self.kl: dict[Any, float] = {}
        self.n: dict[Any, int] = {}

    def add(self, key: Any, lp: torch.Tensor, targets: torch.Tensor, clean_lp: torch.Tensor | None) -> None:
        """lp [S, V] log-probs of this variant, targets [S], clean_lp [S, V] (None for the clean run)."""
        ce = -lp.gather(1, targets[:, None])[:, 0]
        self.ce[key] = self.ce.get(key, 0.0) + float(ce.double().sum())
        if clean_lp is not None:
            kl = (clean_lp.exp() * (clean_lp - lp)).sum(-1)
            self.kl[key] = self.kl.get(key, 0.0) + float(kl.double().sum())
        else:
            self.kl[key] = 0.0
        self.n[key] = self.n.get(key, 0) + int(targets.numel())

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


@torch.no_grad()
def clean_forward(model: Any, sites: Sites, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One full forward: logits [B, T, V] and {"x", "y", "resid"} captured with hooks ([B, T, d] each)."""
    store: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            store[name] = act.detach()
            return act

        return fn

    hooks = [(sites.input_hook, grab("x")), (sites.output_hook, grab("y")), (resid_hook(sites), grab("resid"))]
    logits = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=hooks)
    return logits, store


@torch.no_grad()
def splice_batch(
    model: Any,
    sites: Sites,
    tokens: torch.Tensor,
    keep: torch.Tensor,
    variants: Sequence[tuple[Any, Replace]],
    stats: SpliceStats,
    from_layer: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score the clean run, zero and mean ablation and every ``(key, replace)`` variant on one batch.

    tokens, keep [B, T]. With ``from_layer`` the intervened forwards restart from the clean residual stream
    entering block L (``start_at_layer``): blocks before L cannot see the change, so this only skips
    recomputing them (bit-identical logits; checked in the tests). Returns the clean (x, y) [B, T, d] so
    callers can reuse the forward for fidelity metrics.
    """
    logits, store = clean_forward(model, sites, tokens)
    x, y = store["x"], store["y"]
    scored = scored_positions(keep)
    targets = tokens[:, 1:][scored]
    if targets.numel() == 0:
        return x, y
    clean_lp = _log_probs_at(logits, scored)
    del logits
    stats.add("clean", clean_lp, targets, None)
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
        out = model.run_with_hooks(inp, return_type="logits", fwd_hooks=_hooks(sites, keep, replace), **start)
        stats.add(key, _log_probs_at(out, scored), targets, clean_lp)
        del out
    return x, y
