"""The small TrainConfig the training tests share (synthetic data on the CPU unless overridden)."""

from __future__ import annotations

from typing import Any

from matryoshka_ext.config import TrainConfig, TranscoderConfig


def synthetic_config(
    tc: TranscoderConfig | None = None, *, batch: int = 64, steps: int = 12, **overrides: Any
) -> TrainConfig:
    """`steps` steps of `batch` synthetic tokens on the CPU, no W&B, no progress bar; `overrides` replace any
    field. The default transcoder (256 latents, 2 per token) lets latents die within two batches, so AuxK runs."""
    tc = tc or TranscoderConfig(dict_size=256, group_sizes=[32, 32, 64, 128], k=2, aux_k=16, dead_tokens=2 * batch)
    cfg: dict[str, Any] = dict(
        model_name="synthetic",
        batch_tokens=batch,
        total_tokens=batch * steps,
        lr=3e-3,
        warmup_steps=2,
        log_every=4,
        ckpt_every=6,
        wandb_mode="disabled",
        progress=False,
        device="cpu",
        transcoder=tc,
    )
    cfg.update(overrides)
    return TrainConfig(**cfg)
