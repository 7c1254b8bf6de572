"""Our kernels inside SAELens training: ``MxMatryoshkaBatchTopKTrainingSAE`` reproduces SAELens' own
``MatryoshkaBatchTopKTrainingSAE`` loss terms and gradients on the same batch, and trains identically through
SAELens' ``SAETrainer`` (Adam, LR schedule, dead-latent tracking, auxiliary loss)."""

from __future__ import annotations

import copy

import pytest
import torch

from ._peers import import_peer

D, F, K, WIDTHS = 32, 256, 8, [32, 96, 256]


@pytest.fixture(scope="module")
def sl():
    import_peer("sae_lens", "sae-lens")
    from sae_lens.saes import matryoshka_batchtopk_sae as m

    from matryoshka_ext.integrations import saelens_training as ours

    return m, ours


def _pair(sl, seed: int, **cfg_kw):
    """(SAELens' SAE, ours) with identical, non-trivial parameters (uneven decoder norms, biases)."""
    m, ours = sl
    torch.manual_seed(seed)
    cfg = m.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, matryoshka_widths=list(WIDTHS), **cfg_kw)
    ref = m.MatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        ref.W_dec.mul_(torch.rand(F, 1) + 0.5)
        ref.b_dec.normal_(0, 0.5)
        ref.b_enc.normal_(0, 0.1)
    mine = ours.MxMatryoshkaBatchTopKTrainingSAE(copy.deepcopy(cfg))
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def _step_input(x, dead):
    from sae_lens.saes.sae import TrainStepInput

    return TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)


@pytest.mark.parametrize(
    "cfg_kw",
    [
        {},
        {"rescale_acts_by_decoder_norm": False},
        {"use_matryoshka_aux_loss": True},
        {"apply_b_dec_to_input": False, "aux_loss_coefficient": 0.5},
    ],
    ids=["default", "no-rescale", "matryoshka-aux", "no-input-bias"],
)
def test_training_forward_pass_matches_saelens(sl, seed, cfg_kw):
    ref, mine = _pair(sl, seed, **cfg_kw)
    x = torch.randn(64, D) * 2 + 0.3
    dead = torch.rand(F) < 0.3
    outs = []
    for sae in (ref, mine):
        sae.train()
        out = sae.training_forward_pass(_step_input(x, dead))
        out.loss.backward()
        outs.append(out)
    o_ref, o_mine = outs
    assert (
        set(o_ref.losses)
        == set(o_mine.losses)
        == {
            "mse_loss",
            "auxiliary_reconstruction_loss",
            "inner_mse_loss_32",
            "inner_mse_loss_96",
        }
    )
    assert float(o_ref.losses["auxiliary_reconstruction_loss"].detach()) > 0  # the dead latents are exercised
    for key in o_ref.losses:
        torch.testing.assert_close(o_mine.losses[key].float(), o_ref.losses[key].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o_mine.loss, o_ref.loss, rtol=1e-5, atol=1e-5)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(dict(mine.named_parameters())[name].grad, p.grad, rtol=1e-4, atol=1e-5)
    assert float(mine.topk_threshold) == pytest.approx(float(ref.topk_threshold), rel=1e-6)
    torch.testing.assert_close(o_mine.feature_acts.to_dense(), o_ref.feature_acts.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o_mine.sae_out, o_ref.sae_out.detach(), rtol=1e-5, atol=1e-5)


def test_trains_identically_through_saelens_trainer(sl, seed):
    """A few steps of SAELens' SAETrainer.fit (dead-latent window 2, so the aux loss turns on) per SAE: same
    losses every step and the same final parameters."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    ref, mine = _pair(sl, seed)
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(128, D, generator=g) * 2 for _ in range(8)]
    logs: dict[str, list[dict[str, float]]] = {}
    for name, sae in (("ref", ref), ("mine", mine)):
        log: list[dict[str, float]] = []
        fwd = sae.training_forward_pass

        def recording(step_input, fwd=fwd, log=log):
            out = fwd(step_input)
            log.append(
                {k: float(v.detach()) for k, v in out.losses.items()} | {"dead": int(step_input.dead_neuron_mask.sum())}
            )
            return out

        sae.training_forward_pass = recording
        cfg = SAETrainerConfig(
            total_training_samples=128 * len(batches),
            train_batch_size_samples=128,
            lr=3e-3,
            lr_end=3e-3,
            dead_feature_window=2,
            feature_sampling_window=4,
            device="cpu",
        )
        SAETrainer(cfg, sae, iter(batches)).fit()
        logs[name] = log
    assert len(logs["ref"]) == len(batches)
    assert any(step["dead"] > 0 for step in logs["ref"])
    for a, b in zip(logs["ref"], logs["mine"]):
        assert a.keys() == b.keys() and a["dead"] == b["dead"]
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (k, a, b)
    # Same parameters up to summation order: the kernels add in another order than SAELens' dense matmuls, and
    # Adam turns a last-bit difference in a near-zero gradient into up to a whole lr-sized step of that element
    # (m / sqrt(v) ~ sign(g)). So: nearly every element tight, and none off by more than one lr step.
    lr = 3e-3
    for name, p in ref.named_parameters():
        q = dict(mine.named_parameters())[name].detach()
        off = (q - p.detach()).abs() > 1e-5 + 1e-4 * p.detach().abs()
        assert off.float().mean() <= 1e-3, (name, int(off.sum()))
        assert float((q - p.detach()).abs().max()) <= lr, name


def test_use_mx_kernels_and_registry(sl):
    m, ours = sl
    cfg = m.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, matryoshka_widths=list(WIDTHS))
    sae = m.MatryoshkaBatchTopKTrainingSAE(cfg)
    assert ours.use_mx_kernels(sae) is sae and isinstance(sae, ours.MxMatryoshkaBatchTopKTrainingSAE)
    ours.register_with_saelens()
    ours.register_with_saelens()  # idempotent
    from sae_lens.registry import get_sae_training_class

    assert get_sae_training_class("matryoshka_batchtopk_mx")[0] is ours.MxMatryoshkaBatchTopKTrainingSAE
    with pytest.raises(TypeError):
        ours.use_mx_kernels(torch.nn.Linear(2, 2))


def test_rejects_fractional_k(sl):
    m, ours = sl
    cfg = m.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=2.5, matryoshka_widths=list(WIDTHS))
    sae = ours.MxMatryoshkaBatchTopKTrainingSAE(cfg)
    with pytest.raises(ValueError, match="integer"):
        sae.training_forward_pass(_step_input(torch.randn(8, D), None))
