"""Skip transcoders in the Trainer: W_skip is optimised (Adam state, gradient clipping), checkpointed and resumed
bit-identically, saved folded in the run's transcoder, and a resume that switches the skip path raises."""

from __future__ import annotations

import pytest
import torch

from matryoshka_ext.config import TranscoderConfig
from matryoshka_ext.loaders import load_transcoder
from matryoshka_ext.training.checkpoint import load_checkpoint
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer

from ..training._configs import synthetic_config

B = 64


def _cfg(skip: bool = True, **kw):
    tc = TranscoderConfig(dict_size=256, group_sizes=[32, 32, 64, 128], k=2, aux_k=16, dead_tokens=2 * B,
                          skip_connection=skip)  # fmt: skip
    # ema_decay 0: the saved transcoder is the checkpoint's model (with averaging it is the average)
    kw = {"steps": 16, "min_lr": 3e-4, "warmup_steps": 2, "log_every": 4, "ckpt_every": 8, "keep_last": 2,
          "ema_decay": 0.0, **kw}
    return synthetic_config(tc, batch=B, **kw)


def test_trains_checkpoints_and_resumes_exactly(tmp_path):
    trainer = Trainer(_cfg(), SyntheticActivations(batch_size=B), str(tmp_path / "full"))
    full = trainer.run()
    ck = load_checkpoint(full.checkpoint)
    W = ck.model["W_skip"]
    assert W.shape == (32, 24) and float(W.abs().max()) > 0  # trained away from its zero init
    assert any(p is trainer.model.W_skip for g in trainer.optimizer.param_groups for p in g["params"])
    assert len(ck.optimizer["state"]) == 5  # Adam holds a state for W_skip too

    Trainer(_cfg(), SyntheticActivations(batch_size=B), str(tmp_path / "part")).run(max_steps=8)
    resumed = Trainer(_cfg(resume=str(tmp_path / "part")), SyntheticActivations(batch_size=B, seed=9),
                      str(tmp_path / "part")).run()  # fmt: skip
    assert resumed.step == full.step == 16
    cr = load_checkpoint(resumed.checkpoint)
    assert cr.model.keys() == ck.model.keys()
    for k in ck.model:
        assert torch.equal(cr.model[k], ck.model[k]), k
    for i, st in ck.optimizer["state"].items():
        for k, v in st.items():
            assert torch.equal(cr.optimizer["state"][i][k], v), (i, k)

    # the run's saved transcoder (folded) predicts what the checkpoint's model predicts, skip term included
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    live = MatryoshkaTranscoder(_cfg().transcoder.replace(d_in=32, d_out=24))
    live.load_state_dict(ck.model)
    x, _ = next(iter(SyntheticActivations(batch_size=256, seed=5)))
    saved = load_transcoder(full.transcoder_dir)
    with torch.no_grad():
        assert float(live.skip(x).abs().max()) > 0
        torch.testing.assert_close(saved(x), live.reconstruct(x), rtol=1e-5, atol=1e-5)


def test_resume_with_other_skip_setting_raises(tmp_path):
    Trainer(_cfg(), SyntheticActivations(batch_size=B), str(tmp_path / "r")).run(max_steps=8)
    with pytest.raises(ValueError, match="skip_connection"):
        Trainer(_cfg(skip=False, resume=str(tmp_path / "r")), SyntheticActivations(batch_size=B),
                str(tmp_path / "r")).run()  # fmt: skip
