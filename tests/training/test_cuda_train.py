"""The trainer on a CUDA device: bf16 autocast, fused Adam, the unit-norm constraint, resume (skipped without a GPU).

Prints the step time at a Gemma-2-2B-recipe shape (d 2304, 18,432 latents, k 96, 4,096 tokens per step).
"""

from __future__ import annotations

import time

import pytest
import torch

from matryoshka_ext.config import TrainConfig, TranscoderConfig
from matryoshka_ext.training.checkpoint import load_checkpoint
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer

from ._configs import synthetic_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cfg(**kw) -> TrainConfig:
    tc = TranscoderConfig(
        dict_size=18432, group_sizes=[2304, 2304, 4608, 4608, 4608], k=96, aux_k=256, aux_penalty=1 / 64,
        dead_tokens=3 * 4096,
    )  # fmt: skip
    return synthetic_config(tc, batch=4096, steps=12, lr=2e-4, min_lr=2e-5, device="cuda", autocast_bf16=True, **kw)


def _data():
    return SyntheticActivations(
        d_in=2304, d_out=2304, batch_size=4096, n_features=4096, active=32, device="cuda"
    )


def test_cuda_bf16_training_and_resume(tmp_path):
    trainer = Trainer(_cfg(), _data(), str(tmp_path / "a"))
    trainer.setup()
    assert trainer.optimizer.param_groups[0]["fused"]
    x, y = trainer._next_batch()
    for _ in range(2):  # warm up kernels and the allocator
        trainer.train_step(x, y)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 5
    for _ in range(n):
        out = trainer.train_step(x, y)
    torch.cuda.synchronize()
    ms = 1000 * (time.perf_counter() - t0) / n
    print(
        f"\n[{torch.cuda.get_device_name()}] train step, F=18432 d=2304 k=96 N=4096 bf16 autocast: {ms:.1f} ms"
    )
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    norms = trainer.model.W_dec.norm(dim=1)
    assert (norms - 1).abs().max() < 1e-5

    res = Trainer(_cfg(), _data(), str(tmp_path / "b")).run(max_steps=6)
    assert res.step == 6
    resumed = Trainer(_cfg(resume=str(tmp_path / "b")), _data(), str(tmp_path / "b")).run()
    assert resumed.step == 12 and resumed.last_metrics["l0_norm"] == pytest.approx(96, rel=0.05)
    ck = load_checkpoint(resumed.checkpoint)
    assert all(torch.isfinite(v.float()).all() for v in ck.model.values())
