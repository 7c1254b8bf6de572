"""Several layers at once: one command trains a transcoder per layer from one pass of the language model.

`matryoshka-ext train-multi --layers 8,12,17 [--spread-layers] [TrainConfig flags]`

One Trainer per layer, driven in lockstep (step s of every layer, then step s+1), all fed by one stream:
- live LM (cache_tokens == 0): one ActivationSource over all layers' sites, so each LM forward (stopped
  after the deepest layer) yields {layer: (x, y)}; one shuffling buffer holds all layers' rows in the same
  order; a per-layer view hands each trainer its layer's half of the current batch;
- cached (cache_tokens > 0): one LM pass writes every missing layer's cache (keyed as a single-layer run's,
  so single- and multi-layer runs share caches); each layer then reads its own cache in the same order;
- synthetic: a stream of {layer: (x, y)} from per-layer ground-truth dictionaries (tests).

Layout: <out_dir>/<run_name>/layer_<L>/ is a complete single-layer run folder (checkpoints/, transcoder/,
metrics.jsonl), plus multi.json listing the layers. `--resume <run>` resumes every layer from the newest
checkpoint step that all of them have (they checkpoint at the same steps).

Ranks (torchrun): by default every rank trains every layer, data-parallel (each rank runs the LM on its own
contexts; one DDP per layer). With `--spread-layers` layer i goes to rank i % W and trains there alone on the
whole stream: no gradient traffic at all, but each rank runs the LM itself (fine with caches, which are built
once for all layers by rank 0). See docs/DISTRIBUTED.md for when to prefer which.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from ..config import TrainConfig
from .checkpoint import checkpoint_dirs
from .distributed import DistContext, init_distributed, split_layers
from .pipeline import EvalFn, _LazyLM, buffer_stream, build_samples_hook, ensure_caches_shared
from .sources import CachedActivations, SyntheticActivations
from .trainer import Trainer, TrainResult, _GracefulStop

Pair = tuple[torch.Tensor, torch.Tensor]
MULTI_MANIFEST = "multi.json"


class MultiSynthetic:
    """{layer: (x [B/W, d_in], y [B/W, d_out])} per batch: one `SyntheticActivations` per layer, each with its
    own ground-truth dictionary (dict_seed = layer) and the same sampling seed."""

    def __init__(self, layers: list[int], batch_size: int, seed: int, shard: tuple[int, int], **kw: Any) -> None:
        self.streams = {
            layer: SyntheticActivations(batch_size=batch_size, seed=seed, shard=shard, dict_seed=layer, **kw)
            for layer in layers
        }

    def __iter__(self) -> Iterator[dict[int, Pair]]:
        return self

    def __next__(self) -> dict[int, Pair]:
        return {layer: next(s) for layer, s in self.streams.items()}

    def state_dict(self) -> dict[str, Any]:
        return {str(layer): s.state_dict() for layer, s in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for layer, s in self.streams.items():
            s.load_state_dict(state[str(layer)])


class _Lockstep:
    """Hands out one multi-layer batch per step: the first layer to ask pulls the next {layer: pair} from the
    shared stream, the others take their part of it. Memory: one batch of every layer at most."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._it: Iterator[dict[int, Pair]] | None = None
        self._slots: dict[int, Pair] = {}

    def take(self, layer: int) -> Pair:
        if layer not in self._slots:
            if self._it is None:
                self._it = iter(self.stream)
            # a layer that already finished leaves its part unclaimed: dropping it is what we want
            self._slots = dict(next(self._it))
        return self._slots.pop(layer)


class _LayerView:
    """One layer's ActivationStream over a `_Lockstep`; the shared stream's state is every layer's state (the
    primary view restores it, the others would only repeat that)."""

    def __init__(self, lockstep: _Lockstep, layer: int, primary: bool) -> None:
        self.lockstep, self.layer, self.primary = lockstep, layer, primary

    def __iter__(self) -> Iterator[Pair]:
        return self

    def __next__(self) -> Pair:
        return self.lockstep.take(self.layer)

    def state_dict(self) -> dict[str, Any]:
        return self.lockstep.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.primary:
            self.lockstep.stream.load_state_dict(state)
            self.lockstep._slots, self.lockstep._it = {}, None


def parse_layers(text: str | Iterable[int]) -> list[int]:
    """'8,12,17' (or ints) -> sorted unique non-negative layers."""
    items = [int(t) for t in text.replace(" ", ",").split(",") if t] if isinstance(text, str) else list(text)
    if not items or any(i < 0 for i in items) or len(set(items)) != len(items):
        raise ValueError(f"--layers must be distinct non-negative layer indices, got {text!r}")
    return sorted(items)


def multi_run_dir(cfg: TrainConfig, layers: list[int]) -> str:
    """<out_dir>/<run_name> (default name: model-L8_12_17-F...-k...-selection), suffixed -2, -3... if taken."""
    name = cfg.run_name or cfg.default_run_name().replace(f"-L{cfg.layer}-", "-L" + "_".join(map(str, layers)) + "-")
    base = os.path.join(cfg.out_dir, name)
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def layer_dir(run_dir: str, layer: int) -> str:
    return os.path.join(run_dir, f"layer_{layer}")


def read_multi_layers(run_dir: str) -> list[int]:
    """The layers of a multi-layer run folder (from multi.json)."""
    with open(os.path.join(run_dir, MULTI_MANIFEST)) as fh:
        return [int(layer) for layer in json.load(fh)["layers"]]


def common_resume_points(run_dir: str, layers: list[int]) -> dict[int, str]:
    """layer -> its checkpoint at the newest step every layer in `layers` has."""
    found = {layer: dict(checkpoint_dirs(layer_dir(run_dir, layer))) for layer in layers}
    steps = set.intersection(*(set(d) for d in found.values())) if found else set()
    if not steps:
        have = {layer: sorted(d) for layer, d in found.items()}
        raise ValueError(f"--resume {run_dir}: no checkpoint step common to layers {layers} (found {have})")
    step = max(steps)
    return {layer: found[layer][step] for layer in layers}


def build_multi_data(
    cfg: TrainConfig,
    layers: list[int],
    device: torch.device,
    data_ctx: DistContext,
    cache_ctx: DistContext,
    cache_layers: list[int] | None = None,
) -> tuple[dict[int, Any], dict[int, EvalFn | None], Callable[[], None]]:
    """Per-layer training streams and held-out callables for `layers`, all from one pass of the LM, and a
    closer.

    `data_ctx`: how the training data is sharded (the ranks training these layers together). `cache_ctx`:
    the ranks that share activation caches, every one of which must call this (rank 0 builds the caches of
    all `cache_layers` in one LM pass, the others wait)."""
    cache_layers = cache_layers or layers
    shard = (data_ctx.rank, data_ctx.world_size)
    if cfg.model_name == "synthetic":
        tc = cfg.transcoder
        kw = dict(d_in=tc.d_in or 32, d_out=tc.d_out or 24, device=device)
        stream = MultiSynthetic(layers, cfg.batch_tokens, cfg.seed, shard, **kw)
        evals: dict[int, EvalFn | None] = {layer: None for layer in layers}
        if cfg.eval_tokens:
            for layer in layers:
                evals[layer] = _synthetic_eval(cfg, layer, kw)
        return _views(stream, layers), evals, lambda: None

    lm = _LazyLM(cfg, device)
    evals = {layer: None for layer in layers}
    if cfg.eval_tokens and cfg.eval_split:
        eval_paths = ensure_caches_shared(cfg, lm, cfg.eval_split, cfg.eval_tokens, cache_layers, cache_ctx)
        for layer in layers:
            evals[layer] = _cached_eval(eval_paths[layer], cfg.batch_tokens, device)
    if cfg.cache_tokens:
        paths = ensure_caches_shared(cfg, lm, cfg.dataset_split, cfg.cache_tokens, cache_layers, cache_ctx)
        lm.release()
        streams = {
            layer: CachedActivations(
                paths[layer], cfg.batch_tokens, seed=cfg.seed, device=device, shard=shard, mode=cfg.cache_mode
            )
            for layer in layers
        }
        return streams, evals, lambda: None
    if not layers:
        return {}, evals, lambda: None
    stream = buffer_stream(cfg, lm.multi_source(cfg.dataset_split, layers, shard), device, data_ctx)
    return _views(stream, layers), evals, stream.close


def _views(stream: Any, layers: list[int]) -> dict[int, Any]:
    lockstep = _Lockstep(stream)
    return {layer: _LayerView(lockstep, layer, primary=(i == 0)) for i, layer in enumerate(layers)}


def _synthetic_eval(cfg: TrainConfig, layer: int, kw: dict[str, Any]) -> EvalFn:
    def fn() -> Iterator[Pair]:
        held = SyntheticActivations(
            batch_size=min(cfg.batch_tokens, cfg.eval_tokens), seed=cfg.seed + 1, dict_seed=layer, **kw
        )
        for _ in range(max(1, cfg.eval_tokens // held.batch_size)):
            yield next(held)

    return fn


def _cached_eval(path: str, batch: int, device: torch.device) -> EvalFn:
    def fn() -> Iterator[Pair]:
        return CachedActivations(path, batch_size=1, device=device, mode="mmap").ordered_batches(batch)

    return fn


def run_multi_training(
    cfg: TrainConfig,
    layers: list[int] | str,
    spread: bool = False,
    max_steps: int | None = None,
) -> dict[int, TrainResult]:
    """Train one transcoder per layer (cfg with `layer` replaced) from one pass of the LM; returns this rank's
    results by layer (all layers unless `spread`). `cfg.resume` may name a multi-layer run folder."""
    layers = parse_layers(layers)
    ctx, device = init_distributed(cfg.device)
    if cfg.resume:
        run_dir = os.path.abspath(cfg.resume)
        saved = read_multi_layers(run_dir)
        if saved != layers:
            raise ValueError(f"--resume {run_dir}: that run trains layers {saved}, not {layers}")
    else:
        run_dir = ctx.broadcast_object(multi_run_dir(cfg, layers) if ctx.is_main else None)
        if ctx.is_main:
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, MULTI_MANIFEST), "w") as fh:
                json.dump({"layers": layers, "spread_layers": spread, "world_size": ctx.world_size}, fh)
    mine = split_layers(layers, ctx) if spread else layers
    # spread: each layer's trainer is alone on its rank (no DDP, whole stream); else all ranks, data-parallel
    train_ctx = DistContext.single() if spread else ctx
    resume = common_resume_points(run_dir, mine) if cfg.resume and mine else {}
    streams, evals, close = build_multi_data(cfg, mine, device, train_ctx, ctx, cache_layers=layers)
    if not mine:  # more ranks than layers: this rank only took part in building the caches
        return {}
    callbacks: dict[int, list] = {layer: [] for layer in mine}
    if cfg.samples_every and cfg.model_name != "synthetic" and train_ctx.is_main:
        lm = _LazyLM(cfg, device)  # one LM load for every layer's held-out samples
        for layer in mine:
            out = os.path.join(layer_dir(run_dir, layer), "samples")
            callbacks[layer].append(build_samples_hook(cfg.replace(layer=layer), device, out, lm=lm))
        lm.release()
    trainers = [
        Trainer(
            cfg.replace(layer=layer, resume=resume.get(layer)),
            streams[layer],
            layer_dir(run_dir, layer),
            device,
            evals[layer],
            dist=train_ctx,
            callbacks=callbacks[layer],
        )
        for layer in mine
    ]
    try:
        return dict(zip(mine, _run_lockstep(trainers, max_steps)))
    finally:
        close()


def _run_lockstep(trainers: list[Trainer], max_steps: int | None) -> list[TrainResult]:
    """`Trainer.run` for several trainers at once: step s of each, in order, then step s + 1."""
    opened: list[Trainer] = []
    stop = _GracefulStop()
    try:
        for t in trainers:
            t.begin(max_steps)
            opened.append(t)
        while not all(t.done for t in trainers):
            if any([t.should_stop(stop) for t in trainers]):  # a list: every trainer takes part in the vote
                for t in trainers:
                    t._interrupted = True
                break
            for t in trainers:
                if not t.done:
                    t.step_once()
        stop.restore()
        return [t.finish() for t in trainers]
    finally:
        stop.restore()
        for t in opened:
            t.close()
