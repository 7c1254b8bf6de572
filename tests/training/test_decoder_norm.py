"""TranscoderConfig.decoder_norm: 'unit' keeps decoder rows at unit norm during training; 'free' leaves them
unconstrained (as sparsify's transcoders) and the saved transcoder gets unit rows by folding each row's norm into
its encoder column and bias, which keeps every latent's contribution a_f W_dec[f]."""

from __future__ import annotations

import pytest
import torch

from matryoshka_ext.config import ConfigError, TranscoderConfig
from matryoshka_ext.training.checkpoint import load_checkpoint
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer
from matryoshka_ext.transcoder import MatryoshkaTranscoder

from ._configs import synthetic_config

B = 64


def _tc(**kw) -> TranscoderConfig:
    return TranscoderConfig(dict_size=256, group_sizes=[32, 32, 64, 128], k=2, aux_k=16, dead_tokens=2 * B, **kw)


def test_decoder_norm_validated():
    with pytest.raises(ConfigError, match="decoder_norm"):
        _tc(decoder_norm="l2")


def test_fold_keeps_each_latents_contribution():
    model = MatryoshkaTranscoder(_tc(d_in=16, d_out=12))
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(256, 1) * 3 + 0.1)  # rows of norm 0.1 .. 3.1
        model.b_enc.normal_()
    x = torch.randn(40, 16)
    W_old = model.W_dec.detach().clone()
    norm = W_old.norm(dim=1)
    with torch.no_grad():
        pre = model.pre_activations(x)
        model.fold_decoder_norms()
        pre2 = model.pre_activations(x)
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(256), rtol=0, atol=1e-5)
    torch.testing.assert_close(pre2, pre * norm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pre2.relu() @ model.W_dec, pre.relu() @ W_old, rtol=1e-4, atol=1e-4)


def test_projection_and_renormalisation_only_for_unit_rows():
    for mode, expect_unit in (("unit", True), ("free", False)):
        model = MatryoshkaTranscoder(_tc(d_in=16, d_out=12, decoder_norm=mode))
        g = torch.randn_like(model.W_dec)
        model.W_dec.grad = g.clone()
        model.project_decoder_grad()
        radial = torch.linalg.vecdot(model.W_dec.grad, model.W_dec.detach(), dim=1)
        assert bool((radial.abs() < 1e-5).all()) == expect_unit, mode
        with torch.no_grad():
            model.W_dec.mul_(2.0)
        model.normalize_decoder()
        norms = model.W_dec.detach().norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms) * (1.0 if expect_unit else 2.0), atol=1e-5), mode


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_free_rows_train_free_and_save_unit(tmp_path, ema_decay):
    cfg = synthetic_config(_tc(decoder_norm="free"), batch=B, steps=12, ema_decay=ema_decay, lr=1e-2)
    trainer = Trainer(cfg, SyntheticActivations(batch_size=B), str(tmp_path / "r"))
    res = trainer.run()
    live = load_checkpoint(res.checkpoint).model["W_dec"]
    assert float((live.norm(dim=1) - 1).abs().max()) > 1e-3  # training moved the norms
    saved = MatryoshkaTranscoder.from_pretrained(res.transcoder_dir)
    torch.testing.assert_close(saved.W_dec.detach().norm(dim=1), torch.ones(256), rtol=0, atol=1e-5)
    if ema_decay == 0:  # the saved model is the live one, folded
        norm = live.norm(dim=1)
        torch.testing.assert_close(saved.W_dec.detach() * norm[:, None], live, rtol=1e-5, atol=1e-6)
    # the threshold is recalibrated for the folded encoder: the batch selection's smallest kept activation
    with torch.no_grad():
        acts = saved.encode(trainer._last_x, mode="batch")
    assert float(saved.threshold) == pytest.approx(float(acts.values[acts.values > 0].min()), rel=1e-5)


def test_projection_in_row_blocks_equals_one_pass(monkeypatch):
    # On CPU the row dot products run in blocks of decoder rows; with blocks that do not divide F the projected
    # gradient must still be g - (g . w / |w|^2) w for every row.
    from matryoshka_ext.transcoder import model as model_mod

    model = MatryoshkaTranscoder(_tc(d_in=16, d_out=12))
    W = model.W_dec.detach().clone()
    g = torch.randn_like(W)
    expected = g - ((g * W).sum(1) / (W * W).sum(1)).unsqueeze(1) * W
    monkeypatch.setattr(model_mod, "_CPU_ROW_BLOCK", 7)
    model.W_dec.grad = g.clone()
    model.project_decoder_grad()
    torch.testing.assert_close(model.W_dec.grad, expected, rtol=1e-5, atol=1e-6)
