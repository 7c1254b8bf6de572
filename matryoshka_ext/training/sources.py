"""Activation streams the trainer consumes, beyond the live LM buffer of `matryoshka_ext.data`.

A stream is an iterator of (x [B, d_in], y [B, d_out]) batches with `state_dict()` / `load_state_dict()`
(JSON-able values or tensors), so a checkpoint can record the exact data position.

- `SyntheticActivations`: a sparse ground-truth dictionary, generated from a seeded generator (tests).
- `write_activation_cache` / `CachedActivations`: run the LM once, keep its activations on disk (safetensors
  shards), then train any number of epochs over them in a seeded random order; a held-out tail serves
  evaluation. Resuming needs only (epoch, position).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..config import CACHE_MODES
from .serialize import fsync_dir, save_json, save_tensors


class SyntheticActivations:
    """x = c @ D_in + noise, y = c @ D_out with sparse non-negative codes c over `n_features` features.

    The ground-truth dictionary comes from `dict_seed`; every batch from one CPU generator seeded by `seed`,
    so the stream is reproducible and resumable.

    `shard=(rank, world)`: data parallel. `batch_size` is the global batch; this rank returns its rows
    [rank*B/world, (rank+1)*B/world) of it. Every rank draws the whole (cheap, synthetic) global batch, so the
    global stream, and the state (generator, batches), are the same for every world size.
    """

    def __init__(
        self,
        d_in: int = 32,
        d_out: int = 24,
        batch_size: int = 64,
        n_features: int = 128,
        active: int = 4,
        seed: int = 0,
        device: str | torch.device = "cpu",
        noise: float = 0.01,
        dict_seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.d_in, self.d_out, self.batch_size = d_in, d_out, batch_size
        self.rows = _shard_rows(batch_size, shard)
        self.n_features, self.active, self.noise, self.device = (
            n_features,
            active,
            noise,
            torch.device(device),
        )
        g = torch.Generator().manual_seed(10_000 + dict_seed)  # the ground truth; `seed` only drives sampling
        self.D_in = torch.randn(n_features, d_in, generator=g) / d_in**0.5
        self.D_out = torch.randn(n_features, d_out, generator=g) / d_out**0.5
        self.freq = torch.rand(n_features, generator=g) + 0.1
        self.gen = torch.Generator().manual_seed(seed)
        self.batches = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, g = self.batch_size, self.gen
        idx = torch.multinomial(self.freq.expand(B, -1), self.active, generator=g)
        codes = torch.zeros(B, self.n_features).scatter_(1, idx, torch.rand(B, self.active, generator=g) + 0.5)
        x = codes @ self.D_in + self.noise * torch.randn(B, self.d_in, generator=g)
        y = codes @ self.D_out + 0.3
        self.batches += 1
        lo, hi = self.rows
        return x[lo:hi].to(self.device), y[lo:hi].to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["generator"])
        self.batches = int(state["batches"])


def _shard_rows(batch_size: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, stop) of rank `shard[0]`'s rows in a global batch of `batch_size` rows."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world}")
    n = batch_size // world
    return rank * n, (rank + 1) * n


# ----------------------------------------------------------------------------------------------------------
# disk cache

MANIFEST = "manifest.json"


def cache_is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def write_activation_cache(
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_tokens: int,
    path: str,
    dtype: torch.dtype = torch.bfloat16,
    meta: dict[str, Any] | None = None,
    shard_tokens: int = 65_536,
    progress: bool = True,
) -> str:
    """Consume (x [n, d_in], y [n, d_out]) chunks until `n_tokens` tokens, writing safetensors shards.

    Written into a temp folder and renamed to `path` at the end, so an interrupted run leaves no partial
    cache. Returns `path`.
    """
    write_activation_caches(
        ({0: chunk} for chunk in chunks), n_tokens, {0: path}, dtype, {0: meta or {}}, shard_tokens, progress
    )
    return path


def write_activation_caches(
    chunks: Iterable[dict[int, tuple[torch.Tensor, torch.Tensor]]],
    n_tokens: int,
    paths: dict[int, str],
    dtype: torch.dtype = torch.bfloat16,
    metas: dict[int, dict[str, Any]] | None = None,
    shard_tokens: int = 65_536,
    progress: bool = True,
) -> dict[int, str]:
    """`write_activation_cache` for several sites from one pass: chunks are {key: (x [n, d_in], y [n, d_out])}
    (e.g. one LM forward's activations at several layers), and cache `paths[key]` gets the first `n_tokens`
    rows of key's stream. All caches are committed (renamed into place) only once all are complete."""
    writers = {key: _CacheWriter(path, dtype, (metas or {}).get(key), shard_tokens) for key, path in paths.items()}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tokens, unit="tok", unit_scale=True, desc="caching activations", dynamic_ncols=True)
    try:
        total = 0
        for chunk in chunks:
            take = min(next(iter(chunk.values()))[0].shape[0], n_tokens - total)
            for key, w in writers.items():
                w.add(*chunk[key], take)
            total += take
            if bar is not None:
                bar.update(take)
            if total >= n_tokens:
                break
        if total < n_tokens:
            raise RuntimeError(f"activation source ran dry after {total} of {n_tokens} tokens")
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return dict(paths)


class _CacheWriter:
    """One cache folder being written: rows go to safetensors shards in a temp folder next to `path`."""

    def __init__(self, path: str, dtype: torch.dtype, meta: dict[str, Any] | None, shard_tokens: int) -> None:
        self.path, self.dtype, self.meta, self.shard_tokens = path, dtype, meta or {}, shard_tokens
        self.parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(self.parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=".tmp-cache-", dir=self.parent)
        self.shards: list[dict[str, Any]] = []
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.pending = self.total = 0
        self.d_in = self.d_out = None

    def add(self, x: torch.Tensor, y: torch.Tensor, take: int) -> None:
        x, y = x[:take].detach().to("cpu", self.dtype), y[:take].detach().to("cpu", self.dtype)
        self.d_in, self.d_out = x.shape[1], y.shape[1]
        self.xs.append(x)
        self.ys.append(y)
        self.pending += take
        self.total += take
        if self.pending >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_tensors(os.path.join(self.tmp, name), {"x": torch.cat(self.xs), "y": torch.cat(self.ys)})
        self.shards.append({"file": name, "tokens": self.pending})
        self.xs, self.ys, self.pending = [], [], 0

    def commit(self) -> None:
        self._flush()
        manifest = {
            "tokens": self.total,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "dtype": str(self.dtype).removeprefix("torch."),
            "shards": self.shards,
            "meta": self.meta,
        }
        save_json(os.path.join(self.tmp, MANIFEST), manifest)
        fsync_dir(self.tmp)
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        os.rename(self.tmp, self.path)
        fsync_dir(self.parent)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class CorruptCacheError(ValueError):
    """An activation cache folder whose manifest and shards disagree, or a shard that does not parse."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"activation cache {path!r}: {reason} (delete the folder to rebuild it)")
        self.path = path


class _MappedRows:
    """The (x, y) rows of a cache folder, memory-mapped shard by shard, never read in whole.

    Pages are read on first touch and live in the OS page cache, so data-parallel ranks on one node share one
    copy, start-up costs nothing, and a cache larger than RAM still works (random reads then hit the disk).
    """

    def __init__(self, path: str) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with open(os.path.join(path, MANIFEST)) as fh:
                self.manifest = json.load(fh)
            shards = self.manifest["shards"]
            d_in, d_out = int(self.manifest["d_in"]), int(self.manifest["d_out"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCacheError(path, f"unreadable {MANIFEST}: {e}") from None
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        starts = [0]
        for shard in shards:
            file = os.path.join(path, str(shard.get("file", "")))
            try:
                with safe_open(file, framework="pt") as f:  # get_tensor maps the file (MAP_PRIVATE, lazy)
                    x, y = f.get_tensor("x"), f.get_tensor("y")
            except (OSError, SafetensorError, KeyError) as e:
                raise CorruptCacheError(path, f"shard {shard.get('file')!r} does not load: {e}") from None
            n = x.shape[0]
            if x.shape != (n, d_in) or y.shape != (n, d_out) or n != shard.get("tokens"):
                raise CorruptCacheError(
                    path,
                    f"shard {shard['file']!r} holds x {tuple(x.shape)}, y {tuple(y.shape)}; the manifest says "
                    f"{shard.get('tokens')} tokens of d_in={d_in}, d_out={d_out}",
                )
            self.xs.append(x)
            self.ys.append(y)
            starts.append(starts[-1] + n)
        if not self.xs or starts[-1] != self.manifest.get("tokens"):
            raise CorruptCacheError(
                path, f"the shards hold {starts[-1]} tokens, the manifest says {self.manifest.get('tokens')}"
            )
        self.starts = torch.tensor(starts)
        self.tokens, self.d_in, self.d_out = starts[-1], d_in, d_out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.xs + self.ys)

    def read_in(self) -> None:
        """Copy every row into process memory (one tensor each for x and y): faster random gathers, since
        anonymous memory gets huge pages and file mappings do not (about 1.6 against 6-10 ms for a 4096-row
        batch of the offline default on the 2-core CPU box)."""
        self.xs, self.ys = [torch.cat(self.xs)], [torch.cat(self.ys)]
        self.starts = torch.tensor([0, self.tokens])

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `idx` [n] (int64, any order) -> (x [n, d_in], y [n, d_out]) in the stored dtype."""
        if len(self.xs) == 1:
            return self.xs[0].index_select(0, idx), self.ys[0].index_select(0, idx)
        # Sorted, so each shard is read as one ascending run; then one index_select restores idx's order.
        sorted_idx, order = idx.sort()
        bounds = torch.searchsorted(sorted_idx, self.starts).tolist()
        runs = [(s, sorted_idx[a:b] - int(self.starts[s])) for s, (a, b) in enumerate(zip(bounds, bounds[1:])) if a < b]
        back = torch.empty_like(order).scatter_(0, order, torch.arange(idx.numel()))
        x = torch.cat([self.xs[s].index_select(0, local) for s, local in runs]).index_select(0, back)
        y = torch.cat([self.ys[s].index_select(0, local) for s, local in runs]).index_select(0, back)
        return x, y


def _fits_in_memory(nbytes: int) -> bool:
    """`auto` reads a cache in when one copy per process on this node (torchrun's LOCAL_WORLD_SIZE) takes at
    most half of the memory available now."""
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return False
    return nbytes * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)) <= avail // 2


class CachedActivations:
    """Epochs over a disk cache in a seeded random order. The last `eval_tokens` tokens are held out.

    Batches hold `batch_size` tokens (an epoch's remainder is dropped), as float32 on `device`.
    State: {"epoch", "position"}; epoch e's order is randperm(seed, e), so nothing else needs saving.
    `mode`: "mmap" keeps the shards memory-mapped (see `_MappedRows`; opening reads only the manifest and the
    headers); "memory" reads them in; "auto" reads in when that fits (`_fits_in_memory`), else maps. The
    batches are the same in every mode.

    `shard=(rank, world)`: data parallel. `batch_size` is the global batch; this rank reads only its rows
    [rank*B/world, (rank+1)*B/world) of each global batch. `position` counts global tokens, so a checkpoint
    resumes under any world size.
    """

    def __init__(
        self,
        path: str,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        eval_tokens: int = 0,
        shard: tuple[int, int] = (0, 1),
        mode: str = "auto",
    ) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"mode must be one of {CACHE_MODES}, got {mode!r}")
        self.rows = _shard_rows(batch_size, shard)
        self.data = _MappedRows(path)
        self.manifest = self.data.manifest
        total = self.tokens = self.data.tokens
        if not 0 <= eval_tokens < total:
            raise ValueError(f"eval_tokens must be in [0, {total}), got {eval_tokens}")
        self.train_tokens = total - eval_tokens
        if batch_size > self.train_tokens:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.train_tokens} cached training tokens")
        self.in_memory = mode == "memory" or (mode == "auto" and _fits_in_memory(self.data.nbytes))
        if self.in_memory:  # only once the arguments are known to be good: this reads the whole cache
            self.data.read_in()
        self.path, self.batch_size, self.seed = path, batch_size, seed
        self.device = torch.device(device)
        self.d_in, self.d_out = self.data.d_in, self.data.d_out
        self.epoch, self.position = 0, 0
        self._order: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.train_tokens // self.batch_size

    def _epoch_order(self) -> torch.Tensor:
        if self._order is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(self.train_tokens, generator=g)
        return self._order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch_size > self.train_tokens:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        idx = self._epoch_order()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        lo, hi = self.rows
        return self._get(idx[lo:hi])

    def _get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.gather(idx)
        return x.to(self.device, torch.float32, non_blocking=True), y.to(self.device, torch.float32, non_blocking=True)

    def ordered_batches(
        self, batch_size: int | None = None, start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Cached tokens start.. in stored order (the last batch may be smaller); does not move the stream."""
        bs = batch_size or self.batch_size
        for s in range(start, self.tokens, bs):
            yield self._get(torch.arange(s, min(s + bs, self.tokens)))

    def eval_batches(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out tail in order (empty when eval_tokens == 0)."""
        return self.ordered_batches(batch_size, self.train_tokens)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
