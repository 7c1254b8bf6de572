"""Evaluate one or several transcoders on exactly the same tokens and sites.

One token stream, one clean forward per batch, and every transcoder scored on that batch: fidelity per prefix
(``metrics.FidelityStats``), latent usage (``metrics.SparsityStats``) and, on the first ``splice_tokens``
scored predictions, the spliced-in next-token loss per prefix (``splice``). Sites come from ``data.sites``.

    from matryoshka_ext.eval import evaluate, EvalConfig
    res = evaluate([tc_a, tc_b], model, gemma_sites(6), contexts, EvalConfig(n_tokens=16384))

``contexts``: an iterable of ``LongTensor [T]`` (``data.tokens.token_contexts``) or a ``[N, T]`` tensor.

With ``activations`` (an iterable of ``(x [n, d_in], y [n, d_out])``, e.g. a training run's held-out activation
cache of the same sites, BOS/pad already dropped) fidelity and sparsity come from those rows and the language
model runs only for the spliced loss: one clean forward per batch (its log-probabilities kept for every
variant) and one intervened forward per ablation and per spliced prefix. Without ``splice_tokens`` the model
is not needed at all (``model=None``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .._timing import stage
from ..data.sites import Sites
from ..loaders.base import BaseTranscoder
from .metrics import FidelityStats, SparsityStats
from .splice import LogitScorer, SpliceStats, splice_batch


@dataclass
class EvalConfig:
    """What to measure and how much of it.

    n_tokens              tokens (BOS/pad excluded) for fidelity and sparsity metrics; the last batch is trimmed
                          so exactly this many are used (fewer only if the stream ends)
    splice_tokens         scored next-token predictions for the spliced loss (0 = no splicing); whole contexts
    batch_contexts        contexts per language-model forward for the fidelity pass
    splice_batch_contexts contexts per spliced forward (the clean softmax of B*T rows is kept: [B*T, vocab] float32)
    splice_prefixes       "all", "last", or a list of 1-based prefix numbers to splice (each costs one forward)
    dense_threshold       a latent is "dense" when it fires on more than this fraction of tokens
    chunk_tokens          rows per transcoder call (bounds the [rows, F] encoder pre-activations)
    splice_from_layer     intervened forwards restart at block L from the clean residual (same logits, faster)
    """

    n_tokens: int = 16_384
    splice_tokens: int = 4_096
    batch_contexts: int = 8
    splice_batch_contexts: int = 2
    splice_prefixes: str | list[int] = "all"
    dense_threshold: float = 0.1
    chunk_tokens: int = 4096
    splice_from_layer: bool = True

    def validate(self) -> None:
        for name in ("n_tokens", "batch_contexts", "splice_batch_contexts", "chunk_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.splice_tokens < 0:
            raise ValueError(f"splice_tokens must be >= 0, got {self.splice_tokens}")
        if not 0 < self.dense_threshold <= 1:
            raise ValueError(f"dense_threshold must be in (0, 1], got {self.dense_threshold}")


@dataclass
class _Entry:
    tc: BaseTranscoder
    fid: FidelityStats
    spars: SparsityStats
    splice_prefixes: list[int] = field(default_factory=list)


def resolve_splice_prefixes(spec: str | Sequence[int], m: int) -> list[int]:
    """ "all" -> [1..m], "last" -> [m], a list -> the valid 1-based prefixes in it."""
    if spec == "all":
        return list(range(1, m + 1))
    if spec == "last":
        return [m]
    if isinstance(spec, str):
        spec = [int(s) for s in spec.replace(" ", ",").split(",") if s]
    out = sorted({int(p) if int(p) > 0 else m + 1 + int(p) for p in spec})
    return [p for p in out if 1 <= p <= m]


def default_exclude_ids(model: Any) -> list[int]:
    """BOS and pad ids of the model's tokenizer (raises if it has none: pass exclude_token_ids)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("the model has no tokenizer: pass exclude_token_ids (e.g. [bos_id])")
    return sorted({i for i in (tok.bos_token_id, tok.pad_token_id) if i is not None})


def _batches(contexts: Iterable[torch.Tensor] | torch.Tensor, size: int) -> Iterable[torch.Tensor]:
    it = iter(contexts if not torch.is_tensor(contexts) else contexts.unbind(0))
    while True:
        rows = list(itertools.islice(it, size))
        if not rows:
            return
        yield torch.stack(rows)


def _device_of(model: Any) -> torch.device:
    return torch.device(getattr(getattr(model, "cfg", None), "device", None) or "cpu")


@torch.no_grad()
def evaluate(
    transcoders: Sequence[BaseTranscoder] | BaseTranscoder,
    model: Any,
    sites: Sites,
    contexts: Iterable[torch.Tensor] | torch.Tensor,
    cfg: EvalConfig | None = None,
    exclude_token_ids: Sequence[int] | None = None,
    progress: bool = False,
    activations: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Score every transcoder on the same batches; returns a JSON-able dict (see ``report.write_eval``).

    ``activations``: precomputed (x, y) rows for fidelity/sparsity (see the module docstring); ``model`` and
    ``contexts`` then serve the spliced loss only and may be None when ``cfg.splice_tokens == 0``.

    Result layout: ``{"config", "sites", "clean": {ce, ce_zero_ablation, ce_mean_ablation, kl_*, n_scored},
    "transcoders": [{"name", "describe", "prefixes": [{prefix, latents, mse, fvu, ..., l0_mean, ce, delta_ce,
    ce_recovered_zero, ce_recovered_mean, kl}], "sparsity": {...}}], "timing_s"}``.
    """
    cfg = cfg or EvalConfig()
    cfg.validate()
    tcs = [transcoders] if isinstance(transcoders, BaseTranscoder) else list(transcoders)
    if not tcs:
        raise ValueError("no transcoders to evaluate")
    names = [t.name for t in tcs]
    if len(set(names)) != len(names):
        raise ValueError(f"transcoder names must be unique, got {names}")
    needs_lm = activations is None or cfg.splice_tokens > 0
    if needs_lm and (model is None or contexts is None):
        raise ValueError("a model and contexts are needed (no activations given, or splice_tokens > 0)")
    if needs_lm:
        for hook in sites.hooks:
            if hook not in model.hook_dict:
                raise ValueError(f"hook {hook!r} is not in the model")
        exclude = torch.tensor(
            sorted(set(exclude_token_ids)) if exclude_token_ids is not None else default_exclude_ids(model),
            dtype=torch.long,
        )
    dev = _device_of(model) if model is not None else tcs[0].device
    entries = []
    for t in tcs:
        entries.append(
            _Entry(
                t,
                FidelityStats(t.num_prefixes, t.d_out, device=dev),
                SparsityStats(t.num_latents, t.ends, cfg.dense_threshold, device=dev),
                resolve_splice_prefixes(cfg.splice_prefixes, t.num_prefixes) if cfg.splice_tokens else [],
            )
        )
    splice_stats = SpliceStats()
    t0 = time.perf_counter()
    if activations is not None:
        with stage("eval: FVU, L0, density (activation cache)"):
            source = _score_activations(entries, activations, cfg, _progress(cfg.n_tokens, progress, "eval: FVU"))
        if cfg.splice_tokens:
            with stage("eval: spliced LM loss"):
                _splice_only(entries, model, sites, contexts, exclude, cfg, splice_stats, progress)
        res = _assemble(entries, splice_stats, sites, cfg, time.perf_counter() - t0)
        res["fidelity_source"] = source
        return res
    n_fid = 0
    scorer = None  # one LogitScorer (its buffers) for every spliced batch
    bar = _progress(cfg.n_tokens, progress)
    for tokens in _batches(contexts, cfg.batch_contexts):
        if n_fid >= cfg.n_tokens and splice_stats.n.get("clean", 0) >= cfg.splice_tokens:
            break
        tokens = tokens.to(dev)
        keep = ~torch.isin(tokens, exclude.to(dev))
        xs, ys = [], []
        # splice in small sub-batches (vocab-sized logits); once splicing is done, one forward per batch
        step = cfg.splice_batch_contexts if splice_stats.n.get("clean", 0) < cfg.splice_tokens else len(tokens)
        for sub, sub_keep in zip(tokens.split(step), keep.split(step)):
            if splice_stats.n.get("clean", 0) < cfg.splice_tokens:
                variants = [((e.tc.name, p), _replacer(e.tc, p)) for e in entries for p in e.splice_prefixes]
                scorer = scorer or LogitScorer(model)
                x, y = splice_batch(model, sites, sub, sub_keep, variants, splice_stats, cfg.splice_from_layer, scorer)
            else:  # fidelity only: stop the forward after the transcoded block
                _, cache = model.run_with_cache(sub, names_filter=list(sites.hooks), stop_at_layer=sites.layer + 1)
                x, y = cache[sites.input_hook], cache[sites.output_hook]
                del cache
            xs.append(x[sub_keep])
            ys.append(y[sub_keep])
        x, y = torch.cat(xs), torch.cat(ys)
        take = min(x.shape[0], cfg.n_tokens - n_fid)
        if take > 0:
            _score_fidelity(entries, x[:take].float(), y[:take].float(), cfg.chunk_tokens)
            n_fid += take
            bar.update(take)
    bar.close()
    res = _assemble(entries, splice_stats, sites, cfg, time.perf_counter() - t0)
    res["fidelity_source"] = "language model"
    return res


def _score_fidelity(entries: list[_Entry], x: torch.Tensor, y: torch.Tensor, chunk: int) -> None:
    """Update every entry's fidelity and sparsity stats with rows x [n, d_in], y [n, d_out] (float32)."""
    for e in entries:
        for xc, yc in zip(x.split(chunk), y.split(chunk)):
            recon, acts = e.tc.reconstruct_prefixes(xc)
            e.fid.update(yc, recon)
            e.spars.update(acts)


def _score_activations(
    entries: list[_Entry], activations: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: EvalConfig, bar: Any
) -> str:
    """Fidelity and sparsity on the first cfg.n_tokens precomputed rows; returns the result's source label."""
    n = 0
    dev = entries[0].tc.device
    for x, y in activations:
        take = min(x.shape[0], cfg.n_tokens - n)
        if take <= 0:
            break
        _score_fidelity(entries, x[:take].to(dev, torch.float32), y[:take].to(dev, torch.float32), cfg.chunk_tokens)
        n += take
        bar.update(take)
    bar.close()
    return "activation cache"


def _splice_only(
    entries: list[_Entry],
    model: Any,
    sites: Sites,
    contexts: Iterable[torch.Tensor] | torch.Tensor,
    exclude: torch.Tensor,
    cfg: EvalConfig,
    stats: SpliceStats,
    progress: bool,
) -> None:
    """The spliced loss on the first cfg.splice_tokens scored predictions, in the same sub-batches of
    cfg.splice_batch_contexts contexts as the language-model path (so both give the same numbers)."""
    dev = _device_of(model)
    variants = [((e.tc.name, p), _replacer(e.tc, p)) for e in entries for p in e.splice_prefixes]
    bar = _progress(cfg.splice_tokens, progress, f"eval: spliced loss ({3 + len(variants)} forwards/batch)")
    scorer = LogitScorer(model)
    for tokens in _batches(contexts, cfg.splice_batch_contexts):
        done = stats.n.get("clean", 0)
        if done >= cfg.splice_tokens:
            break
        tokens = tokens.to(dev)
        keep = ~torch.isin(tokens, exclude.to(dev))
        splice_batch(model, sites, tokens, keep, variants, stats, cfg.splice_from_layer, scorer)
        bar.update(min(stats.n.get("clean", 0), cfg.splice_tokens) - done)
    bar.close()


def _replacer(tc: BaseTranscoder, prefix: int):
    def replace(xk: torch.Tensor) -> torch.Tensor:
        return tc.reconstruct(xk.float(), prefix=prefix)

    return replace


def _assemble(
    entries: list[_Entry], stats: SpliceStats, sites: Sites, cfg: EvalConfig, seconds: float
) -> dict[str, Any]:
    spliced = "clean" in stats.n
    clean: dict[str, Any] = {"n_scored": stats.n.get("clean", 0)}
    if spliced:
        clean.update(
            n_contexts=stats.paired("clean", "clean")["contexts"],
            ce=stats.mean_ce("clean"),
            ce_zero_ablation=stats.mean_ce("zero"),
            ce_mean_ablation=stats.mean_ce("mean"),
            kl_zero_ablation=stats.mean_kl("zero"),
            kl_mean_ablation=stats.mean_kl("mean"),
        )
    out = []
    for e in entries:
        fid, sp = e.fid.result(), e.spars.result()
        prefixes = []
        prev = None  # the previous spliced prefix's key (its CE is paired with this one's)
        for i, end in enumerate(e.tc.ends):
            row = {
                "prefix": i + 1,
                "latents": end,
                **{k: fid[k][i] for k in ("mse", "fvu", "explained_variance", "nmse", "cosine")},
                "l0_mean": sp["l0_mean"][i],
                "l0_median": sp["l0_median"][i],
            }
            key = (e.tc.name, i + 1)
            if spliced and key in stats.n:
                row.update(stats.summary(key))
                row.update(_paired_fields(stats, key, prev))
                prev = key
            else:
                row.update(ce=None, delta_ce=None, ce_recovered_zero=None, ce_recovered_mean=None, kl=None)
                row.update(_paired_fields(None, key, None))
            prefixes.append(row)
        out.append(
            {
                "name": e.tc.name,
                "describe": e.tc.describe(),
                "n_tokens": fid["n_tokens"],
                "target_variance": fid["target_variance"],
                "prefixes": prefixes,
                "sparsity": sp,
            }
        )
    return {
        "config": asdict(cfg),
        "sites": {"layer": sites.layer, "input_hook": sites.input_hook, "output_hook": sites.output_hook},
        "clean": clean,
        "transcoders": out,
        "timing_s": seconds,
    }


def _paired_fields(stats: SpliceStats | None, key: Any, prev: Any) -> dict[str, Any]:
    """Paired SEs of a spliced prefix (``SpliceStats.paired``): of its delta CE (vs the clean run) and of the
    step from the previous spliced prefix, CE_this - CE_prev (None for the first; ``delta_ce_step_from`` names
    that prefix). ``*_se`` is clustered by context, ``*_se_iid`` treats predictions as independent."""
    out: dict[str, Any] = dict.fromkeys(
        (
            "delta_ce_se",
            "delta_ce_se_iid",
            "delta_ce_step",
            "delta_ce_step_se",
            "delta_ce_step_se_iid",
            "delta_ce_step_from",
        )
    )
    if stats is None:
        return out
    d = stats.paired(key, "clean")
    out.update(delta_ce_se=d["se"], delta_ce_se_iid=d["se_iid"])
    if prev is not None:
        s = stats.paired(key, prev)
        out.update(
            delta_ce_step=s["diff"],
            delta_ce_step_se=s["se"],
            delta_ce_step_se_iid=s["se_iid"],
            delta_ce_step_from=prev[1],
        )
    return out


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str = "eval") -> Any:
    """A tqdm bar (count, rate and ETA) over `total` tokens, or a no-op one."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, unit="tok", unit_scale=True, desc=desc, dynamic_ncols=True)


def finite(v: Any) -> Any:
    """NaN/inf -> None (strict JSON)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
