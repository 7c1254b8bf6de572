"""Training steps of the peer libraries, driven through their own classes (installed in .venv-bench).

Each is configured to the case's shapes, k and groups, and runs the step its own trainer runs:
  sae_lens             MatryoshkaBatchTopKTrainingSAE inside sae_lens's SAETrainer, one `trainer.step(batch)`
                       (training_forward_pass with its nested inner losses + TopK AuxK, backward, clip, Adam)
  dictionary_learning  MatryoshkaBatchTopKTrainer.update(step, x) (nested losses, AuxK, decoder-grad
                       projection, clip, Adam, decoder renormalisation, lr schedule)
  sparsify             SparseCoder(transcode=True) per-row TopK, not nested: the body of sparsify's Trainer for
                       one batch (forward with dead_mask -> fvu + auxk_alpha * auxk, backward, Adam)
SAELens and dictionary_learning are autoencoders (target = input); with d_in == d_out the work is the same as a
transcoder's. The dead latents are the same as ours (steps.dead_latents), re-marked before every step.
"""

from __future__ import annotations

import torch

from .steps import Case, dead_latents, make_data


def build_sae_lens(case: Case):
    from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=case.d,
        d_sae=case.f,
        k=case.k,
        matryoshka_widths=list(case.group_ends),
        device=case.device,
    )
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    tcfg = SAETrainerConfig(
        total_training_samples=10**12,
        train_batch_size_samples=case.n,
        lr_end=3e-4,  # its runner config fills this in; the default scheduler is constant
        device=case.device,
        autocast=case.dtype == "bfloat16",
    )
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=iter(()))
    x, _ = make_data(case)
    dead = dead_latents(case)
    window = tcfg.dead_feature_window

    def step():
        trainer.n_forward_passes_since_fired.masked_fill_(dead, window + 1)
        trainer.step(x)

    return step


def build_dictionary_learning(case: Case):
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

    trainer = MatryoshkaBatchTopKTrainer(
        steps=10**9,
        activation_dim=case.d,
        dict_size=case.f,
        k=case.k,
        layer=0,
        lm_name="bench",
        group_fractions=[s / case.f for s in case.group_sizes],
        device=case.device,
    )
    if trainer.group_sizes != case.group_sizes:
        raise ValueError(f"dictionary_learning groups {trainer.group_sizes} != {case.group_sizes}")
    x, _ = make_data(case)
    dead = dead_latents(case)
    counter = [1]  # step 0 runs a geometric-median init of b_dec: one-time work, not a training step

    def step():
        trainer.num_tokens_since_fired.masked_fill_(dead, trainer.dead_feature_threshold)
        trainer.update(counter[0], x)
        counter[0] += 1

    return step


def build_sparsify(case: Case):
    """(On CPU, steps.preload has turned off sparsify's Triton decoder before its import.)"""
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(num_latents=case.f, k=case.k, transcode=True)
    sae = SparseCoder(case.d, cfg, device=case.device, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (case.f / 2**14) ** 0.5)
    x, y = make_data(case)
    dead = dead_latents(case)
    auxk_alpha = 1 / 32  # sparsify's TrainConfig default

    def step():
        total_variance = (y - y.mean(0)).pow(2).sum()
        out = sae(x=x, y=y, dead_mask=dead, total_variance=total_variance)
        (out.fvu + auxk_alpha * out.auxk_loss).backward()
        opt.step()
        opt.zero_grad()

    return step
