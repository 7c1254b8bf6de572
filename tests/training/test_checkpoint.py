"""Checkpoints: pickle-free round trip, atomic writes, keep-last-K, checksums and fallback on corruption."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from matryoshka_ext.training import checkpoint as ck
from matryoshka_ext.training.optim import make_optimizer
from matryoshka_ext.training.serialize import flatten_state, unflatten_state


@pytest.fixture
def no_pickle(monkeypatch):
    """Fail the test if anything reaches for torch.load / pickle."""

    def boom(*a, **k):
        raise AssertionError("torch.load / pickle must not be used")

    monkeypatch.setattr(torch, "load", boom)
    import pickle

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)


def _state(step: int):
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = make_optimizer([p], lr=1e-2)
    p.grad = torch.randn(4, 3)
    opt.step()
    state = {
        "step": step,
        "rng": ck.capture_rng_state(),
        "data": {
            "epoch": 1,
            "position": 7,
            "gen": torch.Generator().manual_seed(3).get_state(),
            "rows": None,
        },
        "nested": {"t": (1, 2.5, "x"), "ints": {1: "a"}, "arr": np.arange(5)},
    }
    return {"w": p.detach().clone()}, opt.state_dict(), state


def test_flatten_round_trip():
    obj = {"a": (1, [2, torch.ones(2)], {"b": None}), 3: np.float32(2.0), "dt": torch.bfloat16}
    tree, tensors = flatten_state(obj)
    back = unflatten_state(tree, tensors)
    assert back["a"][0] == 1 and torch.equal(back["a"][1][1], torch.ones(2)) and back["a"][2] == {"b": None}
    assert back[3] == 2.0 and back["dt"] is torch.bfloat16
    with pytest.raises(TypeError, match="pickle"):
        flatten_state({"f": object()})


def test_round_trip_without_pickle(tmp_path, no_pickle):
    model, opt_state, state = _state(5)
    path = ck.save_checkpoint(str(tmp_path), 5, model, opt_state, state, keep_last=3)
    assert sorted(os.listdir(path)) == [
        "manifest.json",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "state.safetensors",
    ]
    loaded = ck.load_checkpoint(str(tmp_path))  # a run folder resolves to its latest checkpoint
    assert loaded.path == path
    assert torch.equal(loaded.model["w"], model["w"])
    assert loaded.state["step"] == 5 and loaded.state["nested"]["t"] == (1, 2.5, "x")
    assert loaded.state["nested"]["ints"] == {1: "a"}
    np.testing.assert_array_equal(loaded.state["nested"]["arr"], np.arange(5))
    assert torch.equal(loaded.state["data"]["gen"], state["data"]["gen"])
    # optimizer state loads into a fresh optimizer and matches exactly
    p = torch.nn.Parameter(torch.zeros(4, 3))
    opt = make_optimizer([p], lr=1.0)
    opt.load_state_dict(loaded.optimizer)
    for k, v in opt_state["state"][0].items():
        assert torch.equal(opt.state_dict()["state"][0][k], v), k
    assert opt.param_groups[0]["betas"] == opt_state["param_groups"][0]["betas"]
    # RNG states restore
    ck.restore_rng_state(loaded.state["rng"])
    a = (torch.rand(3), random.random(), np.random.rand())
    ck.restore_rng_state(state["rng"])
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_keep_last_k(tmp_path):
    for step in (10, 20, 30, 40):
        ck.save_checkpoint(str(tmp_path), step, *_state(step), keep_last=2)
    assert [s for s, _ in ck.checkpoint_dirs(str(tmp_path))] == [30, 40]
    assert ck.resolve_checkpoint(str(tmp_path)).endswith("step_000000040")
    # rewriting an existing step replaces it
    ck.save_checkpoint(str(tmp_path), 40, *_state(41), keep_last=2)
    assert ck.load_checkpoint(str(tmp_path)).state["step"] == 41


def test_atomic_on_failure(tmp_path, monkeypatch):
    ck.save_checkpoint(str(tmp_path), 1, *_state(1), keep_last=3)
    from matryoshka_ext.training import serialize

    real = serialize.write_bytes_durably
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 3:  # die half-way through the second checkpoint
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(serialize, "write_bytes_durably", flaky)
    monkeypatch.setattr(ck, "write_bytes_durably", flaky)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(str(tmp_path), 2, *_state(2), keep_last=3)
    root = os.path.join(tmp_path, ck.CKPT_DIRNAME)
    assert sorted(os.listdir(root)) == ["step_000000001"]  # no partial step_2, no temp folder left
    assert ck.load_checkpoint(str(tmp_path)).state["step"] == 1


def test_missing_checkpoint_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.resolve_checkpoint(str(tmp_path))


def _corrupt(path: str, how: str) -> None:
    f = os.path.join(path, "model.safetensors")
    if how == "truncate":
        os.truncate(f, os.path.getsize(f) // 2)
    elif how == "bitflip":  # same size, one bit somewhere in the tensor bytes at the end of the file
        with open(f, "r+b") as fh:
            fh.seek(os.path.getsize(f) - 5)
            b = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([b[0] ^ 0x10]))
    elif how == "no-manifest":
        os.remove(os.path.join(path, ck.MANIFEST))
    elif how == "bad-manifest":
        with open(os.path.join(path, ck.MANIFEST), "w") as fh:
            fh.write("{not json")
    elif how == "missing-file":
        os.remove(os.path.join(path, "optimizer.safetensors"))


@pytest.mark.parametrize("how", ["truncate", "bitflip", "bad-manifest", "missing-file"])
def test_corruption_detected_and_previous_used(tmp_path, how):
    first = ck.save_checkpoint(str(tmp_path), 10, *_state(10), keep_last=3)
    second = ck.save_checkpoint(str(tmp_path), 20, *_state(20), keep_last=3)
    _corrupt(second, how)
    with pytest.raises(ck.CorruptCheckpointError, match="step_000000020"):
        ck.load_checkpoint(second)  # named directly: an error, never a silent substitute
    with pytest.raises(ck.CorruptCheckpointError):
        ck.verify_checkpoint(second)
    with pytest.warns(RuntimeWarning, match="falling back"):
        loaded = ck.load_checkpoint(str(tmp_path))  # the run folder: the newest checkpoint that verifies
    assert loaded.path == first and loaded.state["step"] == 10


def test_unfinished_write_is_not_a_checkpoint(tmp_path):
    first = ck.save_checkpoint(str(tmp_path), 10, *_state(10), keep_last=3)
    second = ck.save_checkpoint(str(tmp_path), 20, *_state(20), keep_last=3)
    _corrupt(second, "no-manifest")  # what a crash between the files and the manifest would look like
    assert [s for s, _ in ck.checkpoint_dirs(str(tmp_path))] == [10]
    assert ck.resolve_checkpoint(str(tmp_path)) == first


def test_all_corrupt_raises(tmp_path):
    only = ck.save_checkpoint(str(tmp_path), 10, *_state(10), keep_last=3)
    _corrupt(only, "bitflip")
    with pytest.raises(ck.CorruptCheckpointError, match="no checkpoint of this run verifies"), pytest.warns(
        RuntimeWarning
    ):
        ck.resolve_checkpoint(str(tmp_path))


def test_checkpoint_with_pickle_payload_is_refused(tmp_path):
    """A state.json cannot smuggle code: unknown node types are refused, and nothing is ever unpickled."""
    import json
    import pickle

    path = ck.save_checkpoint(str(tmp_path), 10, *_state(10), keep_last=3)
    meta_file = os.path.join(path, "state.json")
    meta = json.load(open(meta_file))
    meta["state"]["__map__"]["evil"] = {"__pickle__": pickle.dumps(os.system).hex()}
    raw = json.dumps(meta).encode()
    with open(meta_file, "wb") as fh:
        fh.write(raw)
    # even with the manifest updated to match (an attacker who rewrites the whole folder), loading refuses
    import hashlib

    man = json.load(open(os.path.join(path, ck.MANIFEST)))
    man["files"]["state.json"] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    json.dump(man, open(os.path.join(path, ck.MANIFEST), "w"))
    with pytest.raises(ck.CorruptCheckpointError, match="unknown serialised node"):
        ck.load_checkpoint(path)
