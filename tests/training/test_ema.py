"""Parameter averaging (TrainConfig.ema_decay): the saved transcoder is the renormalised EMA of the weights,
the checkpoint keeps the live weights and the average, and a resumed run reproduces the average exactly."""

from __future__ import annotations

import pytest
import torch

from matryoshka_ext.config import ConfigError
from matryoshka_ext.training.checkpoint import load_checkpoint
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer
from matryoshka_ext.transcoder import MatryoshkaTranscoder

from ._configs import synthetic_config

B = 64


def _cfg(**kw):
    return synthetic_config(batch=B, steps=16, ckpt_every=8, keep_last=3, **kw)


def test_ema_decay_validated():
    with pytest.raises(ConfigError, match="ema_decay"):
        _cfg(ema_decay=1.0)
    with pytest.raises(ConfigError, match="ema_decay"):
        _cfg(ema_decay=-0.1)


def test_ema_off_saves_last_weights(tmp_path):
    trainer = Trainer(_cfg(), SyntheticActivations(batch_size=B), str(tmp_path / "r"))
    res = trainer.run()
    assert trainer.ema is None
    ck = load_checkpoint(res.checkpoint)
    assert "ema" not in ck.state
    assert torch.equal(ck.model["W_dec"], trainer.model.W_dec.detach())


def test_ema_matches_manual_average_and_keeps_the_function(tmp_path):
    decay = 0.8
    trainer = Trainer(_cfg(ema_decay=decay), SyntheticActivations(batch_size=B), str(tmp_path / "r"))
    trainer.begin()
    init = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    assert all(torch.equal(trainer.ema[n], init[n]) for n in init)  # the average starts at the initial weights
    manual = init
    while not trainer.done:
        t = trainer.step
        trainer.step_once()
        d = min(decay, (1 + t) / (10 + t))
        manual = {n: d * manual[n] + (1 - d) * p.detach().float() for n, p in trainer.model.named_parameters()}
        for n in manual:
            assert torch.allclose(trainer.ema[n], manual[n], atol=1e-6), (t, n)
    live = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    x = trainer._last_x
    res = trainer.finish()
    trainer.close()
    # the checkpoint holds the live weights (exact resume) and the average
    ck = load_checkpoint(res.checkpoint)
    assert torch.equal(ck.model["W_dec"], live["W_dec"])
    assert set(ck.state["ema"]) == set(live)
    # the model now holds the average: unit decoder rows, each row's norm folded into its encoder column and bias
    model, ema = trainer.model, ck.state["ema"]
    norm = ema["W_dec"].norm(dim=1)
    assert torch.allclose(model.W_dec.norm(dim=1), torch.ones_like(norm), atol=1e-5)
    assert torch.allclose(model.W_dec * norm[:, None], ema["W_dec"], atol=1e-6)
    assert torch.allclose(model.W_enc, ema["W_enc"] * norm[None, :], atol=1e-6)
    assert torch.allclose(model.b_enc, ema["b_enc"] * norm, atol=1e-6)
    assert torch.allclose(model.b_dec, ema["b_dec"])
    assert not torch.allclose(model.W_dec, live["W_dec"])
    # the threshold: the smallest positive activation the training selection keeps on the last batch
    with torch.no_grad():
        acts = model.encode(x, mode="batch")
    assert float(model.threshold) == pytest.approx(float(acts.values[acts.values > 0].min()))
    # the saved transcoder is that model
    saved = MatryoshkaTranscoder.from_pretrained(res.transcoder_dir)
    with torch.no_grad():
        assert torch.allclose(saved.reconstruct(x, mode="batch"), model.reconstruct(x, mode="batch"), atol=1e-5)


def test_ema_exact_resume(tmp_path):
    full = Trainer(_cfg(ema_decay=0.9), SyntheticActivations(batch_size=B), str(tmp_path / "full")).run()
    Trainer(_cfg(ema_decay=0.9), SyntheticActivations(batch_size=B), str(tmp_path / "part")).run(max_steps=8)
    resumed = Trainer(
        _cfg(ema_decay=0.9, resume=str(tmp_path / "part")), SyntheticActivations(batch_size=B), str(tmp_path / "part")
    ).run()
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for n in a.state["ema"]:
        assert torch.equal(a.state["ema"][n], b.state["ema"][n]), n
    ta = MatryoshkaTranscoder.from_pretrained(full.transcoder_dir)
    tb = MatryoshkaTranscoder.from_pretrained(resumed.transcoder_dir)
    assert torch.equal(ta.W_enc, tb.W_enc) and torch.equal(ta.threshold, tb.threshold)
