"""TrainConfig.density_cap: a latent firing on more than the cap (running rate over training batches) gets its
encoder bias lowered by density_cap_rate * threshold per step; the running rates are checkpointed (exact resume)."""

from __future__ import annotations

import pytest
import torch

from matryoshka_ext.config import ConfigError
from matryoshka_ext.sparse import SparseActs
from matryoshka_ext.training.checkpoint import load_checkpoint
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer

from ._configs import synthetic_config

B = 64


def _cfg(**kw):
    return synthetic_config(batch=B, steps=16, ckpt_every=8, keep_last=3, **kw)


@pytest.mark.parametrize("kw", [dict(density_cap=-0.1), dict(density_cap=1.5), dict(density_cap_rate=-1.0)])
def test_density_cap_validated(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        _cfg(**kw)


def test_off_by_default(tmp_path):
    t = Trainer(_cfg(), SyntheticActivations(batch_size=B), str(tmp_path / "r"))
    res = t.run()
    assert t.density is None and "density" not in load_checkpoint(res.checkpoint).state


def test_bias_lowered_only_above_the_cap(tmp_path):
    cap, rate = 0.5, 0.1
    t = Trainer(_cfg(density_cap=cap, density_cap_rate=rate), SyntheticActivations(batch_size=B), str(tmp_path / "r"))
    t.setup()
    model = t.model
    F = model.cfg.dict_size
    model.threshold.fill_(0.25)
    # 4 rows: latent 0 fires on every row, latent 1 on 3 of 4, latent 2 on 1 of 4 (and a stored 0.0 for latent 3)
    idx = torch.tensor([0, 1, 0, 1, 0, 1, 0, 2, 3])
    val = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    offs = torch.tensor([0, 2, 4, 6, 9])
    acts = SparseActs(val, idx, offs, F)
    b0 = model.b_enc.detach().clone()
    dens = torch.zeros(F)
    want_shift = torch.zeros(F)
    m = Trainer.DENSITY_MOMENTUM
    for _ in range(150):
        t._cap_density(acts, 4)
        dens = m * dens + (1 - m) * torch.tensor([1.0, 0.75, 0.25] + [0.0] * (F - 3))
        want_shift += (dens > cap).float() * rate * 0.25
    assert torch.allclose(t.density, dens, atol=1e-5)
    assert float(t.density[0]) > cap and float(t.density[1]) > cap and float(t.density[2]) < cap
    shift = b0 - model.b_enc.detach()
    assert torch.allclose(shift, want_shift, atol=1e-5)
    assert float(shift[0]) > float(shift[1]) > 0 and torch.all(shift[2:] == 0)


def test_density_cap_exact_resume(tmp_path):
    kw = dict(density_cap=0.001, density_cap_rate=0.5)
    full = Trainer(_cfg(**kw), SyntheticActivations(batch_size=B), str(tmp_path / "full")).run()
    Trainer(_cfg(**kw), SyntheticActivations(batch_size=B), str(tmp_path / "part")).run(max_steps=8)
    resumed = Trainer(
        _cfg(resume=str(tmp_path / "part"), **kw), SyntheticActivations(batch_size=B), str(tmp_path / "part")
    ).run()
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert float(a.state["density"].max()) > 0.001  # the cap was active during the run
    assert torch.equal(a.state["density"], b.state["density"])
    assert torch.equal(a.model["b_enc"], b.model["b_enc"])


def test_revive_raises_only_dead_latents(tmp_path):
    t = Trainer(_cfg(revive_rate=0.2), SyntheticActivations(batch_size=B), str(tmp_path / "r"))
    t.setup()
    model = t.model
    model.threshold.fill_(0.5)
    dead = torch.zeros(model.cfg.dict_size, dtype=torch.bool)
    dead[[3, 7, 100]] = True
    model.tokens_since_fired.copy_(torch.where(dead, model.cfg.dead_tokens, 0))
    b0 = model.b_enc.detach().clone()
    t._revive_dead()
    assert torch.allclose(model.b_enc.detach() - b0, dead.float() * 0.2 * 0.5)
    with pytest.raises(ConfigError, match="revive_rate"):
        _cfg(revive_rate=-1.0)


def test_revive_in_training(tmp_path):
    # the synthetic default lets latents die within two batches: with revival they keep coming back
    t = Trainer(_cfg(revive_rate=0.5), SyntheticActivations(batch_size=B), str(tmp_path / "r"))
    t.run()
    assert t.step == 16
