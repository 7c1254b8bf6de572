"""From a TrainConfig to a finished run: pick the run folder, build the activation stream, train.

Data paths (all resumable):
- model_name "synthetic": `SyntheticActivations` (no LM; for tests and smoke runs).
- cache_tokens > 0: the LM runs once over `cache_tokens` tokens of the training split; the activations go
  to a disk cache keyed by everything that determines them, and training runs epochs over it in a seeded
  order (`CachedActivations`). A second run, or a resume, reuses the cache and skips the LM entirely.
- cache_tokens == 0: live LM activations through the data package's shuffling `ActivationBuffer`.
The held-out evaluation at the end reads `eval_tokens` tokens of `eval_split`, cached the same way.

Under torchrun (several ranks; see docs/DISTRIBUTED.md) every stream is sharded: synthetic and cached
streams give each rank its slice of every global batch (global positions, any world size resumes), the live
LM path gives each rank its own token contexts (rank r of W: contexts r, r+W, ...). Rank 0 builds caches
and picks the run folder; the others wait for it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from .._timing import stage
from ..config import TrainConfig
from .checkpoint import resolve_checkpoint
from .distributed import DistContext, init_distributed
from .sources import (
    CachedActivations,
    SyntheticActivations,
    cache_is_complete,
    write_activation_cache,
    write_activation_caches,
)
from .trainer import Trainer, TrainResult

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
# bump when the cached activations' meaning changes (site definitions, BOS handling, ...)
_CACHE_VERSION = 1

EvalFn = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def run_dir_for(cfg: TrainConfig) -> str:
    """The run folder: the resumed checkpoint's run, else out_dir/run_name (suffixed -2, -3... if taken)."""
    if cfg.resume:
        ckpt = resolve_checkpoint(cfg.resume)
        return os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    base = os.path.join(cfg.out_dir, cfg.run_name or cfg.default_run_name())
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def run_training(cfg: TrainConfig, run_dir: str | None = None, max_steps: int | None = None) -> TrainResult:
    """Build the data the config asks for and train (fresh or resumed) to cfg.total_steps, or stop after
    `max_steps` steps (the schedule still spans the whole run, so a later --resume continues it exactly).

    Launched by torchrun with several ranks, this joins the process group and trains data-parallel."""
    ctx, device = init_distributed(cfg.device)
    run_dir = run_dir or ctx.broadcast_object(run_dir_for(cfg) if ctx.is_main else None)
    lm = _LazyLM(cfg, device) if cfg.model_name != "synthetic" else None
    # one model load serves the eval cache, the train cache and the samples hook
    data, eval_fn = build_data(cfg, device, ctx, lm=lm, keep_lm=bool(cfg.samples_every))
    callbacks = []
    if cfg.samples_every and lm is not None and ctx.is_main:
        callbacks.append(build_samples_hook(cfg, device, os.path.join(run_dir, "samples"), lm=lm))
    if lm is not None and cfg.cache_tokens:
        lm.release()
    try:
        with stage("training (and held-out FVU, saving)"):
            trainer = Trainer(cfg, data, run_dir, device, eval_fn, dist=ctx, callbacks=callbacks)
            return trainer.run(max_steps=max_steps)
    finally:
        close = getattr(data, "close", None)
        if close is not None:  # stops the activation buffer's background thread
            close()


def build_data(
    cfg: TrainConfig,
    device: torch.device,
    ctx: DistContext | None = None,
    lm: _LazyLM | None = None,
    keep_lm: bool = False,
) -> tuple[Any, EvalFn | None]:
    """(training stream, held-out batches callable or None) for `cfg`; this rank's shard under `ctx`.

    `lm`: the lazily loaded LM to use (and share with the caller); both caches come from its one load. It is
    released once the caches exist unless `keep_lm` (the caller still needs it, e.g. for the samples hook)."""
    ctx = ctx or DistContext.single()
    shard = (ctx.rank, ctx.world_size)
    if cfg.model_name == "synthetic":
        tc = cfg.transcoder
        kw = dict(d_in=tc.d_in or 32, d_out=tc.d_out or 24, device=device)
        data = SyntheticActivations(batch_size=cfg.batch_tokens, seed=cfg.seed, shard=shard, **kw)
        if not cfg.eval_tokens:
            return data, None

        def synthetic_eval() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            held = SyntheticActivations(batch_size=min(cfg.batch_tokens, cfg.eval_tokens), seed=cfg.seed + 1, **kw)
            for _ in range(max(1, cfg.eval_tokens // held.batch_size)):
                yield next(held)

        return data, synthetic_eval

    lm = lm or _LazyLM(cfg, device)
    eval_fn = None
    if cfg.eval_tokens and cfg.eval_split:
        eval_path = ensure_cache_shared(cfg, lm, cfg.eval_split, cfg.eval_tokens, ctx)

        def eval_fn() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            held = CachedActivations(eval_path, batch_size=1, device=device, mode="mmap")  # one ordered pass
            return held.ordered_batches(cfg.batch_tokens)

    if cfg.cache_tokens:
        path = ensure_cache_shared(cfg, lm, cfg.dataset_split, cfg.cache_tokens, ctx)
        if not keep_lm:
            lm.release()
        stream = CachedActivations(
            path, cfg.batch_tokens, seed=cfg.seed, device=device, shard=shard, mode=cfg.cache_mode
        )
        return stream, eval_fn
    # each rank runs the LM on its own contexts (r, r+W, ...); the monkeypatchable one-argument call otherwise
    source = lm.source(cfg.dataset_split, shard=shard) if ctx.enabled else lm.source(cfg.dataset_split)
    return buffer_stream(cfg, source, device, ctx), eval_fn


def buffer_stream(cfg: TrainConfig, source: Any, device: torch.device, ctx: DistContext) -> _BufferStream:
    """The shuffled activation buffer over a live LM `source`, as a checkpointable stream of this rank's batches."""
    from ..data.activations import ActivationBuffer

    # background refills overlap the LM with training where a GPU runs the LM; on CPU they share the cores
    buffer = ActivationBuffer(
        source,
        cfg.buffer_tokens,
        _local_batch(cfg.batch_tokens, ctx),
        seed=cfg.seed,
        device=device,
        background=device.type == "cuda",
    )
    return _BufferStream(buffer, cfg.checkpoint_buffer, ctx)


def build_samples_hook(cfg: TrainConfig, device: torch.device, out_dir: str, lm: _LazyLM | None = None) -> Any:
    """An eval.SamplesHook for `samples_every` at `cfg.layer`: the input-site activations of `samples_contexts`
    held-out contexts (eval_split, else the training split) cached once. `lm`: a loaded LM to share (several
    layers); without it one is loaded and dropped again."""
    from ..data.sites import sites_for
    from ..eval.samples import SamplesHook

    own = lm is None
    lm = lm or _LazyLM(cfg, device)
    sites = sites_for(cfg.layer, cfg.input_hook, cfg.output_hook)
    contexts = lm.contexts(cfg.eval_split or cfg.dataset_split)
    hook = SamplesHook.from_model(
        lm.get(), sites, contexts, cfg.samples_contexts, cfg.samples_every, top_n=cfg.samples_top_n, out_dir=out_dir
    )
    if own:
        lm.release()
    return hook


def _local_batch(batch_tokens: int, ctx: DistContext) -> int:
    lo, hi = ctx.shard(batch_tokens)  # raises unless the world size divides the batch
    return hi - lo


class _BufferStream:
    """The data package's ActivationBuffer, checkpointed with or without its rows (`checkpoint_buffer`).

    Data parallel (`ctx` with several ranks): each rank has its own buffer over its own contexts. The
    checkpoint then holds every rank's position and generator (gathered to rank 0, rows never: they would
    be world_size * buffer_tokens * (d_in + d_out) * 4 bytes), so a resume starts from empty buffers at
    those positions: deterministic, not bit-identical to the uninterrupted run. With a different world size
    the run restarts every new rank after the furthest global context any old rank consumed (a few contexts
    of the lagging ranks are skipped, none is read twice).
    """

    def __init__(self, buffer: Any, include_buffer: bool, ctx: DistContext | None = None) -> None:
        self.buffer, self.include_buffer = buffer, include_buffer
        self.ctx = ctx or DistContext.single()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.buffer)

    def state_dict(self) -> dict[str, Any]:
        if not self.ctx.enabled:
            return self.buffer.state_dict(include_buffer=self.include_buffer)
        ranks = self.ctx.all_gather_object(self.buffer.state_dict(include_buffer=False))
        return {"world_size": self.ctx.world_size, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ranks" not in state and not self.ctx.enabled:
            self.buffer.load_state_dict(state)
            return
        ranks, world = (state["ranks"], int(state["world_size"])) if "ranks" in state else ([state], 1)
        if world == self.ctx.world_size:
            mine = dict(ranks[self.ctx.rank])
            mine["buffer"] = None
            self.buffer.load_state_dict(mine)
            return
        self.buffer.load_state_dict(regrid_buffer_state(ranks, world, self.ctx.rank, self.ctx.world_size))

    def close(self) -> None:
        self.buffer.close()


def regrid_buffer_state(ranks: list[dict[str, Any]], world: int, rank: int, new_world: int) -> dict[str, Any]:
    """A buffer state for rank `rank` of `new_world` continuing a run whose `world` ranks left `ranks`.

    Rank r of `world` consumed global contexts r, r + world, ..., r + (p_r - 1) * world. The new ranks
    start at the first global context G after the furthest one consumed; rank r' of W' reads contexts
    s*W' + r' >= G, so it starts at s = ceil((G - r') / W') of its own."""
    furthest = max((r + (int(st["position"]) - 1) * world for r, st in enumerate(ranks)), default=-1)
    g = furthest + 1
    start = max(0, -(-(g - rank) // new_world))
    mine = dict(ranks[min(rank, len(ranks) - 1)])
    mine.update(position=start, buffer=None, exhausted=False, tokens_served=0)
    return mine


# ----------------------------------------------------------------------------------------------------------
# the language model and its activation source, loaded only when needed


class _LazyLM:
    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.model = None
        self.loads = 0  # how many times the model was loaded (one per process is the aim)

    def get(self) -> Any:
        if self.model is None:
            from ..data.models import load_model

            with stage("model load"):
                self.model = load_model(self.cfg.model_name, device=self.device, dtype=_DTYPES[self.cfg.model_dtype])
            self.loads += 1
        return self.model

    def release(self) -> None:
        self.model = None
        gc.collect()

    def contexts(self, split: str, shard: tuple[int, int] = (0, 1)) -> Any:
        """Token contexts [context_size] of `split` (documents with BOS, concatenated and cut), this rank's
        share under `shard=(rank, world)`."""
        from ..data.text import text_dataset
        from ..data.tokens import token_contexts

        cfg = self.cfg
        texts = text_dataset(
            cfg.dataset, split=split, streaming=cfg.streaming, text_field=cfg.text_field, subset=cfg.dataset_subset
        )
        return token_contexts(texts, self.get(), cfg.context_size, prepend_bos=cfg.prepend_bos, shard=shard)

    def source(self, split: str, shard: tuple[int, int] = (0, 1)) -> Any:
        """The data package's ActivationSource over `split` (yields ActivationBatch with .x, .y; BOS dropped);
        `shard=(rank, world)` keeps this rank's contexts only."""
        from ..data.activations import ActivationSource
        from ..data.sites import sites_for

        cfg = self.cfg
        sites = sites_for(cfg.layer, cfg.input_hook, cfg.output_hook)
        contexts = self.contexts(split, shard)
        return ActivationSource(self.get(), sites, contexts, batch_contexts=cfg.lm_batch_contexts, device=self.device)

    def multi_source(self, split: str, layers: list[int], shard: tuple[int, int] = (0, 1)) -> Any:
        """`source` for several layers at once: one LM forward per batch yields {layer: (x, y)} for all of
        them (the forward stops after the deepest one)."""
        from ..data.activations import ActivationSource
        from ..data.sites import sites_for

        cfg = self.cfg
        sites = [sites_for(layer, cfg.input_hook, cfg.output_hook) for layer in layers]
        contexts = self.contexts(split, shard)
        return ActivationSource(self.get(), sites, contexts, batch_contexts=cfg.lm_batch_contexts, device=self.device)


def cache_key(cfg: TrainConfig, split: str, n_tokens: int) -> str:
    """Folder name of an activation cache: a readable prefix + a hash of all that determines its content."""
    ident = {
        "version": _CACHE_VERSION,
        "model": cfg.model_name,
        "model_dtype": cfg.model_dtype,
        "layer": cfg.layer,
        "input_hook": cfg.input_hook,
        "output_hook": cfg.output_hook,
        "dataset": cfg.dataset,
        "subset": cfg.dataset_subset,
        "split": split,
        "text_field": cfg.text_field,
        "context_size": cfg.context_size,
        "prepend_bos": cfg.prepend_bos,
        "tokens": n_tokens,
        "dtype": cfg.cache_dtype,
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    safe = cfg.model_name.replace("/", "_")
    return f"{safe}-L{cfg.layer}-{split}-{n_tokens}-{digest}"


def cache_root_dir(cfg: TrainConfig) -> str:
    if cfg.cache_dir:
        return cfg.cache_dir
    from ..data._cache import cache_root

    return str(cache_root() / "activations")


def ensure_cache(cfg: TrainConfig, lm: _LazyLM, split: str, n_tokens: int) -> str:
    """Path of a complete activation cache for (cfg, split, n_tokens), building it with the LM if missing."""
    path = os.path.join(cache_root_dir(cfg), cache_key(cfg, split, n_tokens))
    if cache_is_complete(path):
        return path
    source = lm.source(split)
    with stage(f"activation caching ({split}, {n_tokens} tokens)"), torch.inference_mode():
        write_activation_cache(
            ((batch.x, batch.y) for batch in source),
            n_tokens,
            path,
            dtype=_DTYPES[cfg.cache_dtype],
            meta={"model": cfg.model_name, "layer": cfg.layer, "split": split, "dataset": cfg.dataset},
            progress=cfg.progress,
        )
    return path


def ensure_cache_shared(
    cfg: TrainConfig, lm: _LazyLM, split: str, n_tokens: int, ctx: DistContext | None = None
) -> str:
    """`ensure_cache` when several ranks need the cache: rank 0 builds it while the others wait; then the
    first rank of any node that still does not see it (its filesystem is not rank 0's) builds its own copy.
    Works for one host, nodes sharing a filesystem, and nodes that share none."""
    ctx = ctx or DistContext.single()
    if not ctx.enabled:
        return ensure_cache(cfg, lm, split, n_tokens)
    path = os.path.join(cache_root_dir(cfg), cache_key(cfg, split, n_tokens))
    if ctx.is_main:
        ensure_cache(cfg, lm, split, n_tokens)
    ctx.barrier()
    if ctx.local_rank == 0 and not cache_is_complete(path):
        ensure_cache(cfg, lm, split, n_tokens)
    ctx.barrier()
    return path


def ensure_caches_shared(
    cfg: TrainConfig,
    lm: _LazyLM,
    split: str,
    n_tokens: int,
    layers: list[int],
    ctx: DistContext | None = None,
) -> dict[int, str]:
    """Activation caches of `layers` (each keyed exactly as a single-layer run's, so either reuses the other's),
    the missing ones written from one pass of the LM; with several ranks, built as `ensure_cache_shared`."""
    ctx = ctx or DistContext.single()
    root = cache_root_dir(cfg)
    paths = {layer: os.path.join(root, cache_key(cfg.replace(layer=layer), split, n_tokens)) for layer in layers}

    def build() -> None:
        missing = [layer for layer in layers if not cache_is_complete(paths[layer])]
        if not missing:
            return
        source = lm.multi_source(split, missing)
        metas = {
            layer: {"model": cfg.model_name, "layer": layer, "split": split, "dataset": cfg.dataset}
            for layer in missing
        }
        with stage(f"activation caching ({split}, {n_tokens} tokens)"), torch.inference_mode():
            write_activation_caches(
                (batch.acts for batch in source),
                n_tokens,
                {layer: paths[layer] for layer in missing},
                dtype=_DTYPES[cfg.cache_dtype],
                metas=metas,
                progress=cfg.progress,
            )

    if not ctx.enabled:
        build()
        return paths
    if ctx.is_main:
        build()
    ctx.barrier()
    if ctx.local_rank == 0:  # a node whose filesystem is not rank 0's builds its own copy
        build()
    ctx.barrier()
    return paths
