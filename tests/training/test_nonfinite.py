"""Numerical faults: a NaN/Inf batch is skipped without touching any state, counted, and too many in a row stop
the run; non-finite weights are never checkpointed."""

from __future__ import annotations

import os

import pytest
import torch

from matryoshka_ext.config import TrainConfig
from matryoshka_ext.training.checkpoint import checkpoint_dirs, load_checkpoint
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import NonFiniteTrainingError, Trainer

from ._configs import synthetic_config

B = 64


def _cfg(**kw) -> TrainConfig:
    return synthetic_config(batch=B, keep_last=5, ckpt_every=4, **kw)


class Poisoned:
    """SyntheticActivations whose batches number `bad` (0-based, counted over the stream) carry NaN/Inf, or
    (with `drop=True`) are left out altogether: the run a skipping trainer should reproduce."""

    def __init__(self, bad: dict[int, str], drop: bool = False) -> None:
        self.inner, self.bad, self.drop, self.n = SyntheticActivations(batch_size=B), bad, drop, 0

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            x, y = next(self.inner)
            i, self.n = self.n, self.n + 1
            kind = self.bad.get(i)
            if kind is None:
                return x, y
            if self.drop:
                continue
            r = int(torch.randint(0, B, ()))  # one poisoned row is enough to poison the whole step
            if kind == "nan-x":
                x[r, int(torch.randint(0, x.shape[1], ()))] = float("nan")
            elif kind == "inf-y":
                y[r, 0] = float("inf")
            elif kind == "huge-x":  # finite input whose square overflows float32 in the loss
                x[r] = 3e38
            return x, y

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "n": self.n}

    def load_state_dict(self, st):
        self.inner.load_state_dict(st["inner"])
        self.n = int(st["n"])


def test_skipped_batches_change_nothing(tmp_path, capsys):
    """Poisoned batches 3, 6 and 9 skipped == the same run on a stream without them (bit-exact on CPU)."""
    bad = {3: "nan-x", 6: "inf-y", 9: "huge-x"}
    a = Trainer(_cfg(), Poisoned(bad), str(tmp_path / "a"))
    ra = a.run()
    b = Trainer(_cfg(), Poisoned(bad, drop=True), str(tmp_path / "b"))
    rb = b.run()
    assert ra.step == rb.step == 12 and a.nonfinite_skipped == 3 and b.nonfinite_skipped == 0
    assert "non-finite loss" in capsys.readouterr().err
    ca, cb = load_checkpoint(ra.checkpoint), load_checkpoint(rb.checkpoint)
    for k in ca.model:  # weights, dead counters and threshold alike
        assert torch.equal(ca.model[k], cb.model[k]), k
        assert torch.isfinite(ca.model[k].float()).all(), k
    assert ca.state["nonfinite_skipped"] == 3 and ra.last_metrics["train/nonfinite_skipped"] == 3
    assert ca.state["scheduler"] == cb.state["scheduler"]


def test_one_skipped_step_leaves_state_untouched(tmp_path):
    t = Trainer(_cfg(), Poisoned({1: "nan-x"}), str(tmp_path / "r"))
    t.setup()
    x, y = t._next_batch()
    assert t.train_step(x, y) is not None
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    opt_before = {k: v.clone() for k, v in t.optimizer.state_dict()["state"][0].items()}
    x, y = t._next_batch()
    assert t.train_step(x, y) is None
    assert t.step == 1 and t.nonfinite_skipped == 1
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in t.optimizer.state_dict()["state"][0].items():
        assert torch.equal(v, opt_before[k]), k
    assert all(p.grad is None for p in t.model.parameters())


def test_too_many_in_a_row_stops_with_last_checkpoint_intact(tmp_path):
    bad = {i: "nan-x" for i in range(6, 100)}  # steps 0-5 fine, then only NaN
    run = str(tmp_path / "r")
    t = Trainer(_cfg(max_nonfinite_in_a_row=3), Poisoned(bad), run)
    with pytest.raises(NonFiniteTrainingError, match="3 non-finite steps in a row at step 6") as e:
        t.run()
    assert "step_000000004" in str(e.value)  # names the checkpoint to go back to
    assert [s for s, _ in checkpoint_dirs(run)] == [4]
    ck = load_checkpoint(run)
    assert all(torch.isfinite(v.float()).all() for v in ck.model.values())


def test_never_checkpoints_nonfinite_weights(tmp_path):
    run = str(tmp_path / "r")
    t = Trainer(_cfg(), SyntheticActivations(batch_size=B), run)
    t.run(max_steps=4)
    with torch.no_grad():
        t.model.W_dec[3, 1] = float("nan")
    with pytest.raises(NonFiniteTrainingError, match="W_dec"):
        t.save()
    assert [s for s, _ in checkpoint_dirs(run)] == [4]
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".tmp")]


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="max_nonfinite_in_a_row"):
        _cfg(max_nonfinite_in_a_row=0)
