"""Activation samples every N steps during training (`samples_every`): written at the due steps, and training
ends with exactly the weights of a run without them (the hook draws no random numbers, touches no state)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from matryoshka_ext.config import TrainConfig, TranscoderConfig
from matryoshka_ext.training.checkpoint import load_checkpoint
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer

from ._configs import synthetic_config

B = 64


def _cfg(d: int) -> TrainConfig:
    groups = [16, 16, 32, 64]
    tc = TranscoderConfig(d_in=d, d_out=d, dict_size=128, group_sizes=groups, k=4, aux_k=16, dead_tokens=2 * B)
    return synthetic_config(tc, batch=B, steps=9, log_every=3, ckpt_every=0, samples_every=3)


def test_samples_hook_during_training_leaves_training_alone(tmp_path):
    pytest.importorskip("transformer_lens")
    from matryoshka_ext.data.models import tiny_model
    from matryoshka_ext.data.sites import gemma_sites
    from matryoshka_ext.eval.samples import SampleSet, SamplesHook

    lm = tiny_model(n_layers=2)
    d = lm.cfg.d_model
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    tokens = torch.randint(3, 512, (6, 20), generator=g)
    tokens[:, 0] = 2
    hook = SamplesHook.from_model(
        lm, gemma_sites(1), tokens, n_contexts=6, every=3, exclude_token_ids=[2], top_n=4, window=(3, 1),
        out_dir=str(tmp_path / "with" / "samples"),
    )  # fmt: skip
    data = dict(d_in=d, d_out=d, batch_size=B)
    with_hook = Trainer(_cfg(d), SyntheticActivations(**data), str(tmp_path / "with"), callbacks=[hook]).run()
    without = Trainer(_cfg(d), SyntheticActivations(**data), str(tmp_path / "without")).run()

    a, b = load_checkpoint(with_hook.checkpoint), load_checkpoint(without.checkpoint)
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    for i in a.optimizer["state"]:
        for k in a.optimizer["state"][i]:
            assert torch.equal(a.optimizer["state"][i][k], b.optimizer["state"][i][k]), (i, k)

    folder = tmp_path / "with" / "samples"
    assert sorted(os.listdir(folder)) == ["step_000000003", "step_000000006", "step_000000009"]
    last = SampleSet.load(str(folder / "step_000000009"))
    assert last.meta["step"] == 9 and last.n_tokens == int((tokens != 2).sum())
    assert last.prefix_ends == [16, 32, 64, 128]
    assert json.loads((folder / "step_000000003" / "samples.json").read_text())["meta"]["step"] == 3
