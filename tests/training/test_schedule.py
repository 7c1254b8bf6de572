"""Warmup + cosine schedule endpoints and the optimiser factory."""

from __future__ import annotations

import pytest
import torch

from matryoshka_ext.training.optim import make_optimizer
from matryoshka_ext.training.schedule import WarmupCosine, lr_at


def test_endpoints():
    lr, min_lr, warm, total = 1e-3, 1e-4, 10, 100
    lrs = [lr_at(s, total, lr, min_lr, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(lr / warm) and lrs[0] > 0  # step 0 is not lr 0
    assert lrs[warm - 1] == pytest.approx(lr)  # warmup reaches the peak
    assert lrs[warm] == pytest.approx(lr)  # cosine starts at the peak
    assert lrs[-1] == pytest.approx(min_lr)  # and the last step uses min_lr
    assert all(a <= b + 1e-15 for a, b in zip(lrs[:warm], lrs[1:warm]))
    assert all(a >= b - 1e-15 for a, b in zip(lrs[warm:], lrs[warm + 1 :]))
    assert min(lrs) >= min_lr - 1e-15
    assert lr_at(1000, total, lr, min_lr, warm) == pytest.approx(min_lr)  # past the end: stays at min_lr


def test_no_warmup_and_degenerate_lengths():
    assert lr_at(0, 10, 1.0, 0.1, 0) == pytest.approx(1.0)
    assert lr_at(9, 10, 1.0, 0.1, 0) == pytest.approx(0.1)
    assert lr_at(0, 1, 1.0, 0.1, 0) == pytest.approx(0.1)  # one step: it is the last one
    assert lr_at(4, 5, 1.0, 0.1, 10) == pytest.approx(0.5)  # still warming up when the run ends


def test_scheduler_drives_optimizer_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], lr=1.0)
    s = WarmupCosine(opt, total_steps=20, lr=1.0, min_lr=0.1, warmup_steps=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    for _ in range(7):
        s.step()
    state = s.state_dict()
    s2 = WarmupCosine(opt, total_steps=20, lr=1.0, min_lr=0.1, warmup_steps=4)
    s2.load_state_dict(state)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(7, 20, 1.0, 0.1, 4))


def test_adam_is_fused_where_available():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([p], lr=1e-3)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["fused"]  # torch offers fused Adam on CPU (>= 2.4)


def test_final_lr_defaults_to_a_fraction_of_lr():
    from matryoshka_ext.config import ConfigError, TrainConfig

    assert TrainConfig(lr=1e-3).final_lr == pytest.approx(3e-4)  # min_lr None follows lr
    assert TrainConfig(lr=1e-3, min_lr=1e-5).final_lr == 1e-5
    with pytest.raises(ConfigError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=2e-3)
