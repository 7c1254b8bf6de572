"""SAELens' own Matryoshka BatchTopK training step, as shipped and with our kernels patched in.

Both run SAELens' ``SAETrainer.step(batch)`` (training_forward_pass with every nested level and the TopK
auxiliary loss, backward, grad clip, Adam); the only difference is ``MxMatryoshkaBatchTopKTrainingSAE``'s
``training_forward_pass`` (``mx.encode`` + ``mx.nested_mse``), which gives the same loss and gradients
(tests/integrations/test_saelens_training.py). 10% of the latents are marked dead before every step so the
auxiliary loss runs in both.

Run: .venv/bin/python -m pytest benchmarks/test_peer_patch.py --benchmark-json=out.json
then: .venv/bin/python -m benchmarks.report out.json
"""

from __future__ import annotations

import pytest
import torch

N, D, F, K = 4096, 640, 8192, 32
WIDTHS = [1024, 2048, 4096, 8192]


def _trainer(patched: bool):
    from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from matryoshka_ext.integrations.saelens_training import use_mx_kernels

    torch.manual_seed(0)
    sae = MatryoshkaBatchTopKTrainingSAE(
        MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, matryoshka_widths=list(WIDTHS))
    )
    if patched:
        use_mx_kernels(sae)
    cfg = SAETrainerConfig(total_training_samples=10**12, train_batch_size_samples=N, lr_end=3e-4, device="cpu")
    return SAETrainer(cfg, sae, iter(()))


@pytest.mark.benchmark(group=f"SAELens Matryoshka BatchTopK SAETrainer.step N={N} d={D} F={F} k={K} m=4")
@pytest.mark.parametrize("impl", ["sae_lens + mx kernels", "sae_lens"])
def test_saelens_step(benchmark, impl):
    pytest.importorskip("sae_lens")
    trainer = _trainer(patched=impl != "sae_lens")
    batch = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(F, dtype=torch.bool)
    dead[torch.randperm(F, generator=torch.Generator().manual_seed(2))[: F // 10]] = True

    def step():
        # mark the same latents dead before every step (the trainer resets those that fired)
        trainer.n_forward_passes_since_fired[dead] = trainer.cfg.dead_feature_window + 1
        return trainer.step(batch)

    out = benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    assert torch.isfinite(out.loss)
    assert float(out.losses["auxiliary_reconstruction_loss"].detach()) > 0
