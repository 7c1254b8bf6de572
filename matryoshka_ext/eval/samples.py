"""Activation samples: for every latent, its top-N activating contexts and its density, in one streaming pass.

``TopActivationCollector`` keeps per latent the N largest activations seen so far, each with its context id,
position, a token window around it and the latent's activation on every window token. Each batch is merged
without a Python loop over latents:

1. keep only entries that beat the latent's current N-th best (cheap pruning, most entries after warm-up);
2. sort them by (latent, -value) and rank them inside each latent's run, keeping ranks < N;
3. scatter them into a [U, N] candidate buffer (U = latents touched), concatenate with the [U, N] current
   buffer and take ``torch.topk(N)`` along dim 1; windows are built only for the winners.

Storage (``SampleSet.save``): ``samples.safetensors`` (tensors) + ``samples.json`` (shapes, sites, names, and
the strings of the token ids that occur in the windows, so a report needs no tokenizer).

``SamplesHook`` runs the same collection every N training steps on a fixed held-out activation set computed
once up front, so it never runs the language model during training, draws no random numbers, keeps gradients
off, and restores the transcoder's train/eval mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.sites import Sites
from ..sparse import SparseActs

SAMPLES_TENSORS = "samples.safetensors"
SAMPLES_JSON = "samples.json"
_TENSOR_FIELDS = (
    "top_values",
    "top_context",
    "top_pos",
    "window_tokens",
    "window_acts",
    "fire_count",
    "act_sum",
)


@dataclass
class SampleSet:
    """Top activating contexts of F latents (N slots each, W = left + 1 + right window tokens).

    top_values    [F, N] float32  activations, descending; -inf marks an empty slot
    top_context   [F, N] int64    stream index of the context (-1: empty)
    top_pos       [F, N] int64    position of the activating token inside its context
    window_tokens [F, N, W] int64 token ids around it (-1: outside the context); column ``left`` is the token
    window_acts   [F, N, W] float32 the latent's activation on each window token (0 where excluded, e.g. BOS)
    fire_count    [F] int64       tokens on which the latent was > 0;  act_sum [F] float64: sum of activations
    n_tokens      tokens seen (BOS/pad excluded); window = (left, right); prefix_ends: group ends or None
    stats         extra per-latent tensors (decoder redundancy, co-activation), saved with the rest
    meta          JSON-able: name, sites, model, vocab {id: string}, ...
    """

    top_values: torch.Tensor
    top_context: torch.Tensor
    top_pos: torch.Tensor
    window_tokens: torch.Tensor
    window_acts: torch.Tensor
    fire_count: torch.Tensor
    act_sum: torch.Tensor
    n_tokens: int
    window: tuple[int, int]
    prefix_ends: list[int] | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_latents(self) -> int:
        return self.top_values.shape[0]

    @property
    def top_n(self) -> int:
        return self.top_values.shape[1]

    @property
    def ends(self) -> list[int]:
        return list(self.prefix_ends) if self.prefix_ends else [self.num_latents]

    def density(self) -> torch.Tensor:
        """[F] float64 fraction of tokens each latent fired on."""
        return self.fire_count.double() / max(self.n_tokens, 1)

    def max_activation(self) -> torch.Tensor:
        """[F] float32 largest activation seen (0 for latents that never fired)."""
        v = self.top_values[:, 0]
        return torch.where(torch.isfinite(v), v, torch.zeros_like(v))

    def group_of(self) -> torch.Tensor:
        """[F] int64 0-based prefix group of each latent."""
        return torch.bucketize(torch.arange(self.num_latents), torch.tensor(self.ends), right=True)

    def contexts(self, latent: int, vocab: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """The filled slots of one latent: [{"value", "context", "pos", "tokens": [str|int], "acts": [float]}]."""
        vocab = vocab if vocab is not None else self.vocab()
        out = []
        for j in range(self.top_n):
            v = float(self.top_values[latent, j])
            if v == float("-inf"):
                break
            toks = self.window_tokens[latent, j].tolist()
            acts = self.window_acts[latent, j].tolist()
            keep = [i for i, t in enumerate(toks) if t >= 0]
            out.append(
                {
                    "value": v,
                    "context": int(self.top_context[latent, j]),
                    "pos": int(self.top_pos[latent, j]),
                    "tokens": [vocab.get(toks[i], toks[i]) for i in keep],
                    "token_ids": [toks[i] for i in keep],
                    "acts": [acts[i] for i in keep],
                    "center": keep.index(self.window[0]),  # index of the activating token in "tokens"
                }
            )
        return out

    def vocab(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta.get("vocab", {}).items()}

    # ------------------------------------------------------------------------------------------ storage
    def save(self, directory: str | os.PathLike) -> str:
        """Write ``samples.safetensors`` + ``samples.json`` into ``directory``; returns the folder."""
        from safetensors.torch import save_file

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        tensors = {k: getattr(self, k).contiguous().cpu() for k in _TENSOR_FIELDS}
        tensors.update({f"stat.{k}": v.contiguous().cpu() for k, v in self.stats.items()})
        save_file(tensors, os.path.join(directory, SAMPLES_TENSORS), metadata={"format": "matryoshka-ext-samples"})
        info = {
            "format": "matryoshka-ext-samples",
            "version": 1,
            "num_latents": self.num_latents,
            "top_n": self.top_n,
            "n_tokens": self.n_tokens,
            "window": list(self.window),
            "prefix_ends": self.prefix_ends,
            "meta": self.meta,
        }
        with open(os.path.join(directory, SAMPLES_JSON), "w") as fh:
            json.dump(info, fh)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SampleSet:
        """Read a folder written by ``save``."""
        from safetensors.torch import load_file

        directory = os.fspath(directory)
        with open(os.path.join(directory, SAMPLES_JSON)) as fh:
            info = json.load(fh)
        if info.get("format") != "matryoshka-ext-samples":
            raise ValueError(f"{directory}: not a samples folder (format {info.get('format')!r})")
        t = load_file(os.path.join(directory, SAMPLES_TENSORS))
        stats = {k[5:]: v for k, v in t.items() if k.startswith("stat.")}
        return cls(
            **{k: t[k] for k in _TENSOR_FIELDS},
            n_tokens=int(info["n_tokens"]),
            window=tuple(info["window"]),
            prefix_ends=info["prefix_ends"],
            stats=stats,
            meta=info.get("meta", {}),
        )


class TopActivationCollector:
    """Streaming top-N activating tokens per latent (see the module docstring for the merge)."""

    def __init__(
        self,
        num_latents: int,
        top_n: int = 16,
        window: tuple[int, int] = (16, 4),
        device: torch.device | str = "cpu",
    ) -> None:
        if top_n <= 0 or window[0] < 0 or window[1] < 0:
            raise ValueError(f"need top_n > 0 and window >= 0, got {top_n}, {window}")
        F, N, W = int(num_latents), int(top_n), window[0] + 1 + window[1]
        self.F, self.N, self.W, self.window = F, N, W, (int(window[0]), int(window[1]))
        dev = torch.device(device)
        self.device = dev
        self.values = torch.full((F, N), float("-inf"), device=dev)
        self.context = torch.full((F, N), -1, dtype=torch.int64, device=dev)
        self.pos = torch.full((F, N), -1, dtype=torch.int64, device=dev)
        self.wtok = torch.full((F, N, W), -1, dtype=torch.int64, device=dev)
        self.wact = torch.zeros((F, N, W), device=dev)
        self.fire_count = torch.zeros(F, dtype=torch.int64, device=dev)
        self.act_sum = torch.zeros(F, dtype=torch.float64, device=dev)
        self.n_tokens = 0
        self._offsets = torch.arange(-self.window[0], self.window[1] + 1, device=dev)

    @torch.no_grad()
    def update(
        self, acts: SparseActs, tokens: torch.Tensor, flat_index: torch.Tensor, context_ids: torch.Tensor
    ) -> None:
        """Merge one batch.

        acts        SparseActs over R rows: ALL evaluated tokens of the batch (window activations are looked up
                    in it, so a batch must not be split across calls; see ``cat_acts``)
        tokens      [B, T] the full token contexts of the batch (BOS included)
        flat_index  [R] int64: row r of ``acts`` is token ``tokens.view(-1)[flat_index[r]]``; must increase
        context_ids [B] int64: stream index of each context (stored with every sample)
        """
        if acts.num_latents != self.F:
            raise ValueError(f"acts have {acts.num_latents} latents, expected {self.F}")
        dev = self.device
        B, T = tokens.shape
        tokens = tokens.to(dev)
        flat_index = flat_index.to(dev)
        context_ids = context_ids.to(dev)
        vals = acts.values.detach().to(dev).float()
        lat = acts.indices.to(dev)
        rows = acts.row_ids().to(dev)
        pos_mask = vals > 0
        vals, lat, rows = vals[pos_mask], lat[pos_mask], rows[pos_mask]
        self.fire_count += torch.bincount(lat, minlength=self.F)
        self.act_sum.index_add_(0, lat, vals.double())
        self.n_tokens += acts.num_rows
        if vals.numel() == 0:
            return
        tok = flat_index[rows]  # [E] flat token index of every positive entry
        # lookup keys for window activations: ascending because rows ascend and indices ascend within a row
        keys = tok * self.F + lat

        # 1. prune: only entries above the latent's current N-th best can enter its list
        c = vals > self.values[lat, self.N - 1]
        cv, cl, ct = vals[c], lat[c], tok[c]
        if cv.numel() == 0:
            return
        # 2. order by latent, then by value descending (two stable sorts), rank within each latent's run
        o = torch.argsort(-cv, stable=True)
        cv, cl, ct = cv[o], cl[o], ct[o]
        o = torch.argsort(cl, stable=True)
        cv, cl, ct = cv[o], cl[o], ct[o]
        rank = torch.arange(cl.numel(), device=dev) - torch.searchsorted(cl, cl)
        k = rank < self.N
        cv, cl, ct, rank = cv[k], cl[k], ct[k], rank[k]
        uniq, inv = torch.unique_consecutive(cl, return_inverse=True)
        U = uniq.numel()
        cand_v = torch.full((U, self.N), float("-inf"), device=dev)
        cand_t = torch.full((U, self.N), -1, dtype=torch.int64, device=dev)
        cand_v[inv, rank] = cv
        cand_t[inv, rank] = ct
        # 3. merge with the current lists
        top = torch.cat([self.values[uniq], cand_v], dim=1).topk(self.N, dim=1)
        sel = top.indices  # [U, N] column in [old | new]
        old_col = sel.clamp(max=self.N - 1)
        new_ctx = self.context[uniq].gather(1, old_col)
        new_pos = self.pos[uniq].gather(1, old_col)
        idx3 = old_col.unsqueeze(-1).expand(U, self.N, self.W)
        new_wtok = self.wtok[uniq].gather(1, idx3)
        new_wact = self.wact[uniq].gather(1, idx3)
        fresh = (sel >= self.N) & torch.isfinite(top.values)
        fu, fs = fresh.nonzero(as_tuple=True)
        if fu.numel():
            ft = cand_t[fu, sel[fu, fs] - self.N]
            b, t = ft // T, ft % T
            tpos = t.unsqueeze(1) + self._offsets  # [C, W]
            inside = (tpos >= 0) & (tpos < T)
            tpos_c = tpos.clamp(0, T - 1)
            wt = tokens[b.unsqueeze(1), tpos_c]
            wt = torch.where(inside, wt, torch.full_like(wt, -1))
            q = (b.unsqueeze(1) * T + tpos_c) * self.F + uniq[fu].unsqueeze(1)
            j = torch.searchsorted(keys, q).clamp(max=keys.numel() - 1)
            found = (keys[j] == q) & inside
            wa = torch.where(found, vals[j], torch.zeros_like(vals[j]))
            new_ctx[fu, fs] = context_ids[b]
            new_pos[fu, fs] = t
            new_wtok[fu, fs] = wt
            new_wact[fu, fs] = wa
        self.values[uniq] = top.values
        self.context[uniq] = new_ctx
        self.pos[uniq] = new_pos
        self.wtok[uniq] = new_wtok
        self.wact[uniq] = new_wact

    def result(self, prefix_ends: Sequence[int] | None = None, meta: dict[str, Any] | None = None) -> SampleSet:
        return SampleSet(
            top_values=self.values.cpu(),
            top_context=self.context.cpu(),
            top_pos=self.pos.cpu(),
            window_tokens=self.wtok.cpu(),
            window_acts=self.wact.cpu(),
            fire_count=self.fire_count.cpu(),
            act_sum=self.act_sum.cpu(),
            n_tokens=self.n_tokens,
            window=self.window,
            prefix_ends=list(prefix_ends) if prefix_ends else None,
            meta=dict(meta or {}),
        )


# ---------------------------------------------------------------------------------------------- collection
def token_strings(tokenizer: Any, ids: Iterable[int]) -> dict[int, str]:
    """{id: decoded string} for the given ids (``str(id)`` without a tokenizer)."""
    ids = sorted({int(i) for i in ids if int(i) >= 0})
    if tokenizer is None:
        return {i: f"<{i}>" for i in ids}
    return {i: tokenizer.decode([i]) for i in ids}


def cat_acts(parts: Sequence[SparseActs]) -> SparseActs:
    """Concatenate SparseActs along rows (same num_latents)."""
    if len(parts) == 1:
        return parts[0]
    offsets = [parts[0].row_offsets]
    base = parts[0].row_offsets[-1]
    for p in parts[1:]:
        offsets.append(p.row_offsets[1:] + base)
        base = base + p.row_offsets[-1]
    return SparseActs(
        torch.cat([p.values for p in parts]),
        torch.cat([p.indices for p in parts]),
        torch.cat(offsets),
        parts[0].num_latents,
    )


def _encode_all(tc: Any, x: torch.Tensor, chunk: int) -> SparseActs:
    """tc.encode over x [R, d_in] in chunks of rows (bounds the [chunk, F] pre-activations), concatenated."""
    return cat_acts([tc.encode(x[s : s + chunk].float()) for s in range(0, max(x.shape[0], 1), chunk)])


@torch.no_grad()
def collect_from_activations(
    tc: Any,
    x: torch.Tensor,
    tokens: torch.Tensor,
    keep: torch.Tensor,
    context_ids: torch.Tensor | None = None,
    top_n: int = 16,
    window: tuple[int, int] = (16, 4),
    chunk_tokens: int = 4096,
    collector: TopActivationCollector | None = None,
    on_acts: Callable[[SparseActs], None] | None = None,
) -> TopActivationCollector:
    """Samples from precomputed input activations x [R, d_in] of the kept positions of tokens [B, T]."""
    col = collector or TopActivationCollector(tc.num_latents, top_n, window, device=x.device)
    flat = keep.reshape(-1).nonzero().squeeze(1)
    if flat.numel() != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but keep selects {flat.numel()} positions")
    cids = context_ids if context_ids is not None else torch.arange(tokens.shape[0])
    acts = _encode_all(tc, x, chunk_tokens)
    col.update(acts, tokens, flat, cids)
    if on_acts is not None:
        on_acts(acts)
    return col


@torch.no_grad()
def collect_samples(
    tc: Any,
    model: Any,
    sites: Sites,
    contexts: Iterable[torch.Tensor] | torch.Tensor,
    n_tokens: int = 65_536,
    top_n: int = 16,
    window: tuple[int, int] = (16, 4),
    batch_contexts: int = 8,
    exclude_token_ids: Sequence[int] | None = None,
    chunk_tokens: int = 4096,
    progress: bool = False,
    on_acts: Callable[[SparseActs], None] | None = None,
) -> SampleSet:
    """Stream contexts through the model up to the transcoded block and collect every latent's top contexts.

    Stops after the batch in which ``n_tokens`` evaluated tokens (BOS/pad excluded) have been seen.
    ``on_acts`` sees every batch's SparseActs too (e.g. ``interp.CoactivationStats.update``).
    """
    from .evaluate import _batches, _device_of, _progress, default_exclude_ids

    exclude = torch.tensor(
        sorted(set(exclude_token_ids)) if exclude_token_ids is not None else default_exclude_ids(model)
    )
    dev = _device_of(model)
    col = TopActivationCollector(tc.num_latents, top_n, window, device=dev)
    next_ctx = 0
    bar = _progress(n_tokens, progress, "samples: top contexts")
    for tokens in _batches(contexts, batch_contexts):
        if col.n_tokens >= n_tokens:
            break
        tokens = tokens.to(dev)
        keep = ~torch.isin(tokens, exclude.to(dev))
        _, cache = model.run_with_cache(tokens, names_filter=[sites.input_hook], stop_at_layer=sites.layer + 1)
        x = cache[sites.input_hook][keep]
        del cache
        before = col.n_tokens
        cids = torch.arange(next_ctx, next_ctx + tokens.shape[0], device=dev)
        collect_from_activations(tc, x, tokens, keep, cids, chunk_tokens=chunk_tokens, collector=col, on_acts=on_acts)
        next_ctx += tokens.shape[0]
        bar.update(col.n_tokens - before)
    bar.close()
    tok = getattr(model, "tokenizer", None)
    meta = {
        "name": getattr(tc, "name", "transcoder"),
        "sites": {"layer": sites.layer, "input_hook": sites.input_hook, "output_hook": sites.output_hook},
        "vocab": {str(k): v for k, v in token_strings(tok, col.wtok.unique().tolist()).items()},
    }
    return col.result(getattr(tc, "prefix_ends", None), meta)


class SamplesHook:
    """Collect activation samples every ``every`` steps during training, on a fixed held-out set.

    Build it before training with ``SamplesHook.from_model`` (runs the LM once to cache the input-site
    activations of ``n_contexts`` held-out contexts), then call ``hook(step, transcoder)`` after each step.
    On a due step it puts the transcoder in eval mode, encodes the cached activations under ``torch.no_grad``
    (JumpReLU inference selection by default), restores the previous mode and returns the ``SampleSet``
    (also saved to ``out_dir/step_XXXXXXXXX`` when ``out_dir`` is set); otherwise it returns None.
    It draws no random numbers and touches no parameter, buffer, gradient or optimizer state.
    """

    def __init__(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        keep: torch.Tensor,
        every: int,
        top_n: int = 16,
        window: tuple[int, int] = (16, 4),
        out_dir: str | None = None,
        vocab: dict[int, str] | None = None,
        mode: str = "jumprelu",
        sites: Sites | None = None,
        on_result: Callable[[int, SampleSet], None] | None = None,
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be positive, got {every}")
        self.x, self.tokens, self.keep = x, tokens, keep
        self.every, self.top_n, self.window = every, top_n, window
        self.out_dir, self.vocab, self.mode, self.sites = out_dir, vocab or {}, mode, sites
        self.on_result = on_result
        self.last: SampleSet | None = None

    @classmethod
    @torch.no_grad()
    def from_model(
        cls,
        model: Any,
        sites: Sites,
        contexts: Iterable[torch.Tensor] | torch.Tensor,
        n_contexts: int,
        every: int,
        exclude_token_ids: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> SamplesHook:
        """Run ``model`` once over ``n_contexts`` contexts and cache their input-site activations."""
        from .evaluate import _batches, _device_of, default_exclude_ids

        exclude = torch.tensor(
            sorted(set(exclude_token_ids)) if exclude_token_ids is not None else default_exclude_ids(model)
        )
        dev = _device_of(model)
        toks = []
        for batch in _batches(contexts, max(1, n_contexts)):
            toks.append(batch[:n_contexts])
            break
        if not toks:
            raise ValueError("no contexts to sample from")
        tokens = toks[0].to(dev)
        keep = ~torch.isin(tokens, exclude.to(dev))
        _, cache = model.run_with_cache(tokens, names_filter=[sites.input_hook], stop_at_layer=sites.layer + 1)
        x = cache[sites.input_hook][keep].float()
        vocab = token_strings(getattr(model, "tokenizer", None), tokens.unique().tolist())
        return cls(x, tokens, keep, every, vocab=vocab, sites=sites, **kwargs)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    @torch.no_grad()
    def __call__(self, step: int, transcoder: Any) -> SampleSet | None:
        if not self.due(step):
            return None
        from ..loaders.base import BaseTranscoder, MatryoshkaAdapter

        module = transcoder.model if isinstance(transcoder, MatryoshkaAdapter) else transcoder
        was_training = module.training
        try:
            module.eval()
            tc = transcoder if isinstance(transcoder, BaseTranscoder) else MatryoshkaAdapter(module, mode=self.mode)
            col = collect_from_activations(tc, self.x, self.tokens, self.keep, top_n=self.top_n, window=self.window)
        finally:
            module.train(was_training)
        meta = {"name": tc.name, "step": step, "vocab": {str(k): v for k, v in self.vocab.items()}}
        if self.sites is not None:
            s = self.sites
            meta["sites"] = {"layer": s.layer, "input_hook": s.input_hook, "output_hook": s.output_hook}
        res = col.result(tc.prefix_ends, meta)
        if self.out_dir:
            res.save(os.path.join(self.out_dir, f"step_{step:09d}"))
        if self.on_result is not None:
            self.on_result(step, res)
        self.last = res
        return res
