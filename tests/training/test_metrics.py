"""Metric names, and metric / eval passes that leave every piece of training state untouched."""

from __future__ import annotations

import random

import pytest
import torch

from matryoshka_ext.config import TranscoderConfig
from matryoshka_ext.training.metrics import evaluate, step_metrics
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.transcoder import MatryoshkaTranscoder


def _model() -> MatryoshkaTranscoder:
    tc = TranscoderConfig(
        d_in=32, d_out=24, dict_size=64, group_sizes=[8, 8, 16, 32], k=4, aux_k=8, dead_tokens=64
    )
    return MatryoshkaTranscoder(tc)


def _snapshot(m: MatryoshkaTranscoder):
    return (
        {k: v.clone() for k, v in m.state_dict().items()},
        torch.get_rng_state(),
        random.getstate(),
        m.training,
    )


def _same(a, b) -> bool:
    sa, ra, pa, ta = a
    sb, rb, pb, tb = b
    return all(torch.equal(sa[k], sb[k]) for k in sa) and torch.equal(ra, rb) and pa == pb and ta == tb


def test_names_and_values():
    m = _model()
    src = SyntheticActivations(batch_size=128)
    x, y = next(src)
    m.initialize_from_batch(x, y)
    m.tokens_since_fired[:10] = 1000  # 10 dead latents, all in the first two groups
    out = m(x, y, update_stats=False)
    before = _snapshot(m)
    metrics = step_metrics(out, m, lr=1e-3, tokens_seen=128, tokens_per_second=5.0)
    assert _same(before, _snapshot(m))
    for name in (
        "losses/overall_loss",
        "losses/mse_loss",
        "losses/auxiliary_reconstruction_loss",
        "metrics/explained_variance",
        "metrics/l0",
        "sparsity/dead_features",
        "details/current_learning_rate",
        "loss",
        "fvu",
        "fvu_min",
        "fvu_max",
        "fvu_mean",
        "l0_norm",
        "aux_loss",
        "dead_features_percentage",
        "learning_rate",
        "performance/tokens_per_second",
    ):
        assert name in metrics, name
    for i in range(1, 5):
        for part in ("fvu", "mse", "l0", "explained_variance", "dead_features_fraction"):
            assert f"prefix_{i}/{part}" in metrics
    assert metrics["sparsity/dead_features"] == 10 and metrics["dead_features_percentage"] == 100 * 10 / 64
    assert (
        metrics["prefix_1/dead_features_fraction"] == 1.0
        and metrics["prefix_4/dead_features_fraction"] == 10 / 64
    )
    assert metrics["fvu"] == metrics["prefix_4/fvu"] == out.fvu[-1].item()
    assert metrics["fvu_min"] == min(out.fvu.tolist()) and metrics["learning_rate"] == 1e-3
    assert metrics["metrics/l0"] == 4.0 and metrics["prefix_4/l0"] == 4.0


def test_evaluate_changes_no_state():
    m = _model()
    src = SyntheticActivations(batch_size=128)
    x, y = next(src)
    m.initialize_from_batch(x, y)
    m.train()
    before = _snapshot(m)
    ev = evaluate(m, [next(src) for _ in range(3)], torch.device("cpu"))
    assert _same(before, _snapshot(m))
    assert ev["tokens"] == 384 and len(ev["fvu"]) == 4 and ev["l0"] == 4.0
    assert len(ev["fvu_jumprelu"]) == 4 and ev["l0_jumprelu"] > 0
    assert evaluate(m, [], torch.device("cpu")) is None


def test_evaluate_fvu_is_around_the_mean_of_all_held_out_tokens(seed):
    """The held-out FVU divides by the variance around the mean of every batch together (eval's definition), not
    by a sum of per-batch variances: batches with different means must not shrink the denominator."""
    torch.manual_seed(seed)
    m = _model()
    src = SyntheticActivations(batch_size=128, seed=seed)
    x0, y0 = next(src)
    m.initialize_from_batch(x0, y0)
    batches = []
    for b in range(3):
        x, y = next(src)
        batches.append((x, y + 2.0 * b * torch.randn(y.shape[1])))  # each batch's own offset
    ev = evaluate(m, batches, torch.device("cpu"))
    X, Y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]).double()
    with torch.no_grad():
        acts = m.encode(X)
        total = (Y - Y.mean(0)).pow(2).sum()
        per_batch = sum((b[1].double() - b[1].double().mean(0)).pow(2).sum() for b in batches)
        for i, got in enumerate(ev["fvu_jumprelu"]):
            sse = (m.decode(acts, i + 1).double() - Y).pow(2).sum()
            assert got == pytest.approx(float(sse / total), rel=1e-4)
            assert got < float(sse / per_batch) * 0.99  # the old denominator gave a different, larger FVU
