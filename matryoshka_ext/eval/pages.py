"""Latent pages (what Neuronpedia / sae-dashboard show): activation histogram, contexts by activation quantile,
and the direct logit attribution of each latent's decoder direction.

``scan`` runs the LM over held-out contexts once and keeps every positive activation as (token row, latent,
value) plus the tokens (an ``ActivationRecord``; ~12 bytes per entry: 65k tokens at L0 32 is ~25 MB). From it:

* ``histograms``: per latent, counts of its nonzero activations in ``bins`` equal-width bins over [0, max].
  The browser draws log10(count / tokens) (log density).
* ``quantile_contexts``: per latent, its nonzero activations split into quantile intervals (0-25, 25-50, 50-75,
  75-100 % of them by value); a seeded sample of ``per_interval`` contexts from each, with the window's
  activations, so a reader sees what weak activations mean, not only the top.
* ``logit_attribution``: for W_out[f] the decoder row in raw output units (it is added to the residual stream by
  ``hook_mlp_out``), its effect on the logits through the final norm's gain and the unembedding,
  (W_out[f] * g) @ W_U; the norm's 1/rms is a positive per-token scalar and is left out (the usual DLA caveat,
  as is ignoring later layers). Top ``n`` promoted and suppressed tokens per latent.
The top contexts themselves come from ``samples.TopActivationCollector`` fed in the same pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..sparse import SparseActs
from .samples import SampleSet, TopActivationCollector, token_strings


@dataclass
class ActivationRecord:
    """Every positive activation of a scan.

    rows [E] int64 token row (0..n_rows-1, kept tokens in scan order); latents [E] int64; values [E] float32;
    row_token [n_rows] int64 flat index into ``tokens`` [B, T] of each row; num_latents F.
    Entries are sorted by (row, latent).
    """

    rows: torch.Tensor
    latents: torch.Tensor
    values: torch.Tensor
    row_token: torch.Tensor
    tokens: torch.Tensor
    num_latents: int

    @property
    def n_rows(self) -> int:
        return len(self.row_token)

    def max_per_latent(self) -> torch.Tensor:
        """[F] float32 largest activation (0 if never fired)."""
        m = torch.zeros(self.num_latents)
        return m.scatter_reduce(0, self.latents, self.values, "amax")


@torch.no_grad()
def scan(
    tc: Any,
    model: Any,
    sites: Any,
    contexts: Iterable[torch.Tensor] | torch.Tensor,
    n_tokens: int = 32_768,
    top_n: int = 16,
    window: tuple[int, int] = (16, 4),
    batch_contexts: int = 8,
    chunk_tokens: int = 4096,
    exclude_token_ids: Iterable[int] | None = None,
) -> tuple[ActivationRecord, SampleSet]:
    """One LM pass: the ActivationRecord and the SampleSet (top contexts, density) of the same tokens.

    Stops after the batch in which ``n_tokens`` kept tokens (BOS/pad, or ``exclude_token_ids``, left out) were seen.
    """
    from .evaluate import _batches, _device_of, default_exclude_ids
    from .samples import _encode_all

    ex = sorted(set(exclude_token_ids)) if exclude_token_ids is not None else default_exclude_ids(model)
    exclude = torch.tensor(ex, dtype=torch.long)
    dev = _device_of(model)
    col = TopActivationCollector(tc.num_latents, top_n, window, device="cpu")
    rows, lats, vals, row_tok, toks = [], [], [], [], []
    n_rows, n_ctx, T = 0, 0, None
    for tokens in _batches(contexts, batch_contexts):
        if n_rows >= n_tokens:
            break
        tokens = tokens.to(dev)
        T = tokens.shape[1] if T is None else T
        if tokens.shape[1] != T:
            continue
        keep = ~torch.isin(tokens, exclude.to(dev))
        _, cache = model.run_with_cache(tokens, names_filter=[sites.input_hook], stop_at_layer=sites.layer + 1)
        x = cache[sites.input_hook][keep].float()
        del cache
        acts = _encode_all(tc, x, chunk_tokens)
        acts = SparseActs(
            acts.values.detach().float().cpu(), acts.indices.cpu(), acts.row_offsets.cpu(), tc.num_latents
        )
        flat = keep.reshape(-1).nonzero().squeeze(1).cpu()
        col.update(acts, tokens.cpu(), flat, torch.arange(n_ctx, n_ctx + tokens.shape[0]))
        pos = acts.values > 0
        rows.append(acts.row_ids()[pos] + n_rows)
        lats.append(acts.indices[pos])
        vals.append(acts.values[pos])
        row_tok.append(flat + n_ctx * T)
        toks.append(tokens.cpu())
        n_rows += acts.num_rows
        n_ctx += tokens.shape[0]
    if not toks:
        raise ValueError("no contexts to scan")
    rec = ActivationRecord(
        torch.cat(rows).long(),
        torch.cat(lats).long(),
        torch.cat(vals),
        torch.cat(row_tok),
        torch.cat(toks),
        tc.num_latents,
    )
    meta = {
        "name": getattr(tc, "name", "transcoder"),
        "sites": {"layer": sites.layer, "input_hook": sites.input_hook, "output_hook": sites.output_hook},
        "vocab": {
            str(k): v for k, v in token_strings(getattr(model, "tokenizer", None), col.wtok.unique().tolist()).items()
        },
    }
    return rec, col.result(getattr(tc, "prefix_ends", None), meta)


def histograms(rec: ActivationRecord, bins: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """([F, bins] int64 counts of nonzero activations per equal-width bin of [0, max_f], [F] max_f)."""
    mx = rec.max_per_latent()
    F = rec.num_latents
    b = (rec.values / mx[rec.latents].clamp_min(1e-30) * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(rec.latents * bins + b, minlength=F * bins).view(F, bins)
    return counts, mx


def _windows(
    rec: ActivationRecord, latent: torch.Tensor, row: torch.Tensor, window: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For C (latent, row) pairs: window token ids [C, W] (-1 outside the context) and the latent's activation
    on each window token [C, W]."""
    B, T = rec.tokens.shape
    flat = rec.row_token[row]
    b, t = flat // T, flat % T
    off = torch.arange(-window[0], window[1] + 1)
    tp = t[:, None] + off[None, :]
    inside = (tp >= 0) & (tp < T)
    tpc = tp.clamp(0, T - 1)
    wt = torch.where(inside, rec.tokens[b[:, None], tpc], torch.full_like(tpc, -1))
    # rows of the window tokens: searchsorted over row_token (ascending)
    wflat = b[:, None] * T + tpc
    wr = torch.searchsorted(rec.row_token, wflat).clamp(max=rec.n_rows - 1)
    row_ok = (rec.row_token[wr] == wflat) & inside
    key = rec.rows * rec.num_latents + rec.latents  # ascending: entries sorted by (row, latent)
    q = wr * rec.num_latents + latent[:, None]
    j = torch.searchsorted(key, q).clamp(max=max(len(key) - 1, 0))
    found = row_ok & (key[j] == q) if len(key) else torch.zeros_like(row_ok)
    wa = torch.where(found, rec.values[j], torch.zeros_like(rec.values[j]))
    return wt, wa


def quantile_contexts(
    rec: ActivationRecord,
    latents: Iterable[int],
    intervals: int = 4,
    per_interval: int = 2,
    window: tuple[int, int] = (12, 3),
    seed: int = 0,
) -> dict[int, list[dict[str, Any]]]:
    """{latent: [{"lo", "hi", "contexts": [(value, token_ids, acts, center)]}]} for each quantile interval,
    lowest first. Sampling is seeded (same page on every run)."""
    gen = torch.Generator().manual_seed(seed)
    lat_set = torch.tensor(sorted(set(int(f) for f in latents)), dtype=torch.long)
    out: dict[int, list[dict[str, Any]]] = {}
    if not len(lat_set) or not len(rec.values):
        return out
    sel = torch.isin(rec.latents, lat_set)
    L, V, R = rec.latents[sel], rec.values[sel], rec.rows[sel]
    o = torch.argsort(L * 0 + V, stable=True)
    o = o[torch.argsort(L[o], stable=True)]  # by latent, then value ascending
    L, V, R = L[o], V[o], R[o]
    uniq, counts = torch.unique_consecutive(L, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pick_l, pick_r, pick_v, pick_q = [], [], [], []
    for f, s, n in zip(uniq.tolist(), starts.tolist(), counts.tolist()):
        for q in range(intervals):
            a, b = s + (n * q) // intervals, s + (n * (q + 1)) // intervals
            if b <= a:
                continue
            take = torch.randperm(b - a, generator=gen)[:per_interval] + a
            for j in take.sort().values.tolist():
                pick_l.append(f)
                pick_r.append(int(R[j]))
                pick_v.append(float(V[j]))
                pick_q.append(q)
    if not pick_l:
        return out
    wt, wa = _windows(rec, torch.tensor(pick_l), torch.tensor(pick_r), window)
    bounds: dict[tuple[int, int], tuple[float, float]] = {}
    for f, s, n in zip(uniq.tolist(), starts.tolist(), counts.tolist()):
        for q in range(intervals):
            a, b = s + (n * q) // intervals, s + (n * (q + 1)) // intervals
            if b > a:
                bounds[(f, q)] = (float(V[a]), float(V[b - 1]))
    for i, (f, q) in enumerate(zip(pick_l, pick_q)):
        toks = wt[i].tolist()
        keep = [k for k, t in enumerate(toks) if t >= 0]
        entry = (pick_v[i], [toks[k] for k in keep], [round(float(wa[i, k]), 4) for k in keep], keep.index(window[0]))
        ivs = out.setdefault(f, [])
        if not ivs or ivs[-1]["q"] != q:
            lo, hi = bounds[(f, q)]
            ivs.append({"q": q, "lo": lo, "hi": hi, "contexts": []})
        ivs[-1]["contexts"].append(entry)
    return out


def output_directions(tc: Any) -> torch.Tensor | None:
    """[F, d_out] decoder rows in raw output units per unit of the activation ``tc.encode`` reports."""
    W = tc.decoder_weights()
    if W is None:
        return None
    W = W.detach().float()
    scale = getattr(getattr(tc, "model", None), "y_scale", None)  # ours: activations are in scaled units
    return W / float(scale) if scale is not None else W


@torch.no_grad()
def logit_attribution(
    W_out: torch.Tensor, model: Any, n: int = 10, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct logit attribution of each row of W_out [F, d_model] through ln_final's gain and W_U.

    Returns (top ids [F, n], their logit effects [F, n], bottom ids [F, n], effects [F, n]) per unit activation.
    """
    W_U = model.W_U.detach().float()  # [d_model, V]
    ln = getattr(model, "ln_final", None)
    g = getattr(ln, "w", None) if ln is not None else None
    gain = g.detach().float() if g is not None else torch.ones(W_U.shape[0], device=W_U.device)
    W_out = W_out.to(W_U.device)
    tops, topv, bots, botv = [], [], [], []
    for s in range(0, len(W_out), chunk):
        eff = (W_out[s : s + chunk] * gain) @ W_U  # [c, V]
        t = eff.topk(n, dim=1)
        bt = (-eff).topk(n, dim=1)
        tops.append(t.indices.cpu())
        topv.append(t.values.cpu())
        bots.append(bt.indices.cpu())
        botv.append(-bt.values.cpu())
    return torch.cat(tops), torch.cat(topv), torch.cat(bots), torch.cat(botv)
