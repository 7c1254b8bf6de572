"""Where the benchmark's activation caches are, and the streams every row trains and is scored on.

One train cache and one held-out cache per layer, built by the project's own pipeline
(``training.pipeline.ensure_cache``, keyed by ``cache_key``): same tokens for every row. Format: safetensors
shards + manifest (``training.sources.CachedActivations``). SAE mode reads the same caches with y := x.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

TRAIN_TOKENS = 300_000
HELDOUT_TOKENS = 122_880  # >= 100k (a latent firing once per 100k tokens is not dead); the eval split has ~127k


@dataclass(frozen=True)
class CachePair:
    """Train and held-out cache folders of one layer (each a complete CachedActivations cache)."""

    layer: int
    train: str
    heldout: str


def default_cache_pair(layer: int, train_tokens: int = TRAIN_TOKENS, heldout_tokens: int = HELDOUT_TOKENS) -> CachePair:
    """The pipeline's cache folders for ``layer`` (default TrainConfig otherwise; read at call time)."""
    from matryoshka_ext.config import TrainConfig
    from matryoshka_ext.training.pipeline import cache_key, cache_root_dir

    cfg = TrainConfig(layer=layer)
    root = cache_root_dir(cfg)
    return CachePair(
        layer,
        os.path.join(root, cache_key(cfg, cfg.dataset_split, train_tokens)),
        os.path.join(root, cache_key(cfg, cfg.eval_split or "eval", heldout_tokens)),
    )


def build_cache_pair(layer: int, train_tokens: int = TRAIN_TOKENS, heldout_tokens: int = HELDOUT_TOKENS) -> CachePair:
    """Build (one LM load, two passes) whatever of ``default_cache_pair(layer)`` is missing."""
    from matryoshka_ext.config import TrainConfig
    from matryoshka_ext.training.pipeline import _LazyLM, ensure_cache

    cfg = TrainConfig(layer=layer)
    lm = _LazyLM(cfg, torch.device("cpu"))
    ensure_cache(cfg, lm, cfg.eval_split or "eval", heldout_tokens)
    ensure_cache(cfg, lm, cfg.dataset_split, train_tokens)
    lm.release()
    return default_cache_pair(layer, train_tokens, heldout_tokens)


def is_complete(path: str) -> bool:
    from matryoshka_ext.training.sources import cache_is_complete

    return cache_is_complete(path)


class SaeStream:
    """A CachedActivations stream whose batches are (x, x): the SAE objective on the same tokens and order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = next(self.inner)
        return x, x

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def train_stream(path: str, batch: int, seed: int, mode: str) -> Any:
    """Epochs over the train cache in the seeded order (x [B, d_in], y [B, d_out]); SAE mode yields (x, x)."""
    from matryoshka_ext.training.sources import CachedActivations

    s = CachedActivations(path, batch, seed=seed, mode="memory")
    return SaeStream(s) if mode == "sae" else s


def heldout_batches(path: str, mode: str, n_tokens: int | None = None, batch: int = 8192) -> Iterator[tuple]:
    """The held-out cache in stored order ((x, y) or (x, x)), the first ``n_tokens`` rows (None = all)."""
    from matryoshka_ext.training.sources import CachedActivations

    held = CachedActivations(path, batch_size=1, mode="mmap")
    left = held.tokens if n_tokens is None else min(n_tokens, held.tokens)
    for x, y in held.ordered_batches(batch):
        if left <= 0:
            return
        x, y = x[:left], y[:left]
        left -= x.shape[0]
        yield (x, x) if mode == "sae" else (x, y)


def cache_tokens(path: str) -> int:
    from matryoshka_ext.training.sources import CachedActivations

    return CachedActivations(path, batch_size=1, mode="mmap").tokens
