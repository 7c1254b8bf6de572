"""The disk activation cache: memory-mapped shards, row gathers across shard boundaries, corrupt folders."""

from __future__ import annotations

import itertools
import json
import os
import sys

import pytest
import torch

from matryoshka_ext.training.sources import (
    CachedActivations,
    CorruptCacheError,
    SyntheticActivations,
    write_activation_cache,
)


def _write(
    tmp_path, name: str, tokens: int, shard_tokens: int, dtype=torch.float32
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """A cache of the first `tokens` rows of a seeded synthetic stream, and those rows."""
    path = write_activation_cache(
        SyntheticActivations(batch_size=13, seed=5),
        tokens,
        str(tmp_path / name),
        dtype=dtype,
        shard_tokens=shard_tokens,
        progress=False,
    )
    rows = list(itertools.islice(SyntheticActivations(batch_size=13, seed=5), -(-tokens // 13)))
    x, y = (torch.cat([r[i] for r in rows])[:tokens].to(dtype) for i in (0, 1))
    return path, x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_across_shards_matches_the_stored_rows(tmp_path, dtype):
    path, x, y = _write(tmp_path, "c", 101, shard_tokens=20, dtype=dtype)  # shards of 26, 26, 26, 23 rows
    c = CachedActivations(path, 8, mode="mmap")
    assert len(c.data.xs) == 4 and c.tokens == 101
    for idx in (torch.randperm(101), torch.randint(0, 101, (64,)), torch.tensor([100, 0, 25, 26, 26])):
        gx, gy = c.data.gather(idx)
        assert gx.dtype == dtype and torch.equal(gx, x[idx]) and torch.equal(gy, y[idx])
    got = torch.cat([bx for bx, _ in c.ordered_batches(17, start=3)])
    assert torch.equal(got, x[3:].float())


def test_order_does_not_depend_on_sharding(tmp_path):
    one, _, _ = _write(tmp_path, "one", 90, shard_tokens=1000)
    many, _, _ = _write(tmp_path, "many", 90, shard_tokens=10)
    a = CachedActivations(one, 16, seed=3, eval_tokens=10, mode="mmap")
    b = CachedActivations(many, 16, seed=3, eval_tokens=10, mode="mmap")
    assert len(a.data.xs) == 1 and len(b.data.xs) > 1
    for _ in range(12):  # past an epoch boundary (5 batches per epoch)
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_shards_are_memory_mapped_not_read_in(tmp_path):
    path, _, _ = _write(tmp_path, "c", 60, shard_tokens=20)
    c = CachedActivations(path, 8, mode="mmap")
    maps = open("/proc/self/maps").read()
    shard_files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    assert len(shard_files) == 3
    for f in shard_files:
        assert os.path.join(path, f) in maps, f"{f} is not mapped"
    assert c.data.xs[0].untyped_storage().nbytes() >= os.path.getsize(os.path.join(path, shard_files[0])) - 4096


def test_corrupt_cache_folders_raise_naming_the_problem(tmp_path):
    path, _, _ = _write(tmp_path, "c", 50, shard_tokens=20)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    shard = os.path.join(path, manifest["shards"][1]["file"])
    data = open(shard, "rb").read()

    open(shard, "wb").write(data[: len(data) // 2])  # truncated
    with pytest.raises(CorruptCacheError, match=manifest["shards"][1]["file"]):
        CachedActivations(path, 8)
    open(shard, "wb").write(data)
    CachedActivations(path, 8)  # restored: loads again

    bad = dict(manifest, tokens=manifest["tokens"] + 1)
    json.dump(bad, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(CorruptCacheError, match="manifest says 51"):
        CachedActivations(path, 8)

    bad = dict(manifest, d_in=manifest["d_in"] + 1)
    json.dump(bad, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(CorruptCacheError, match="d_in="):
        CachedActivations(path, 8)

    open(os.path.join(path, "manifest.json"), "w").write("{not json")
    with pytest.raises(CorruptCacheError, match="unreadable manifest.json"):
        CachedActivations(path, 8)


def test_every_mode_gives_the_same_batches(tmp_path):
    path, _, _ = _write(tmp_path, "c", 80, shard_tokens=16)
    streams = {m: CachedActivations(path, 12, seed=7, eval_tokens=8, mode=m) for m in ("mmap", "memory", "auto")}
    assert not streams["mmap"].in_memory and streams["memory"].in_memory and len(streams["memory"].data.xs) == 1
    assert streams["auto"].in_memory  # a few kB always fits
    for _ in range(9):  # past an epoch boundary (6 batches per epoch)
        (xm, ym), (xr, yr), (xa, ya) = (next(s) for s in streams.values())
        assert torch.equal(xm, xr) and torch.equal(ym, yr) and torch.equal(xm, xa) and torch.equal(ym, ya)
    held = [torch.cat([x for x, _ in s.eval_batches(5)]) for s in streams.values()]
    assert torch.equal(held[0], held[1]) and held[0].shape[0] == 8
    with pytest.raises(ValueError, match="mode must be one of"):
        CachedActivations(path, 12, mode="ram")


def test_auto_maps_when_the_copies_would_not_fit(tmp_path, monkeypatch):
    path, _, _ = _write(tmp_path, "c", 40, shard_tokens=16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2**50))  # one copy per "rank" cannot fit
    assert not CachedActivations(path, 8, mode="auto").in_memory
