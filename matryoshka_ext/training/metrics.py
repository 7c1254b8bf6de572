"""Metrics: names (SAELens-style, per-prefix, and the original project's), the W&B run, the progress bar.

Metrics are read from the training step's own output and the model's buffers, so logging them draws no
random numbers and changes no training state. `evaluate` runs extra batches in eval mode under no_grad with
stat updates off, and restores the mode afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..transcoder import MatryoshkaTranscoder, TranscoderOutput


def step_metrics(
    out: TranscoderOutput,
    model: MatryoshkaTranscoder,
    lr: float,
    tokens_seen: int,
    tokens_per_second: float | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Every logged metric of one training step (one host sync).

    `reduce` (data parallel) combines the packed metric vector across ranks before it is read, e.g. an
    all-reduce mean: losses, L0 and FVU become means of the ranks' values (each rank's FVU is relative to its
    own share of the batch); dead counts and the threshold are identical on every rank already."""
    cfg = model.cfg
    dead = model.dead_mask()
    packed = torch.cat(
        [
            out.loss.detach().float().reshape(1),
            out.aux_loss.detach().float().reshape(1),
            out.l0.float().reshape(1),
            dead.sum().float().reshape(1),
            out.mse.detach().float(),
            out.fvu.float(),
            out.prefix_l0.float(),
            torch.stack([dead[:e].sum() for e in cfg.group_ends]).float(),
            model.threshold.float().reshape(1),
        ]
    )
    if reduce is not None:
        packed = reduce(packed)
    packed = packed.tolist()
    m = cfg.num_groups
    loss, aux, l0, n_dead = packed[:4]
    mse = packed[4 : 4 + m]
    fvu = packed[4 + m : 4 + 2 * m]
    pl0 = packed[4 + 2 * m : 4 + 3 * m]
    pdead = packed[4 + 3 * m : 4 + 4 * m]
    threshold = packed[-1]
    w = cfg.weights
    nested = sum(wi * mi for wi, mi in zip(w, mse))
    F = cfg.dict_size
    metrics: dict[str, float] = {
        # SAELens-style
        "losses/overall_loss": loss,
        "losses/mse_loss": mse[-1],
        "losses/nested_mse_loss": nested,
        "losses/auxiliary_reconstruction_loss": aux,
        "metrics/explained_variance": 1.0 - fvu[-1],
        "metrics/fvu": fvu[-1],
        "metrics/l0": l0,
        "sparsity/dead_features": n_dead,
        "sparsity/dead_features_fraction": n_dead / F,
        "details/current_learning_rate": lr,
        "details/n_training_tokens": float(tokens_seen),
        "details/jumprelu_threshold": threshold,
        # the original project's names
        "loss": loss,
        "fvu": fvu[-1],
        "fvu_min": min(fvu),
        "fvu_max": max(fvu),
        "fvu_mean": sum(fvu) / m,
        "l0_norm": l0,
        "aux_loss": aux,
        "dead_features_percentage": 100.0 * n_dead / F,
        "learning_rate": lr,
    }
    for i, e in enumerate(cfg.group_ends):
        p = f"prefix_{i + 1}"
        metrics[f"{p}/mse"] = mse[i]
        metrics[f"{p}/fvu"] = fvu[i]
        metrics[f"{p}/explained_variance"] = 1.0 - fvu[i]
        metrics[f"{p}/l0"] = pl0[i]
        metrics[f"{p}/dead_features_fraction"] = pdead[i] / e
    if tokens_per_second is not None:
        metrics["performance/tokens_per_second"] = tokens_per_second
    return metrics


@torch.no_grad()
def evaluate(
    model: MatryoshkaTranscoder, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, Any] | None:
    """Per-prefix FVU (summed squared errors / the total variance of y around its mean over all batches, as
    ``matryoshka_ext.eval`` defines it) and L0 on held-out batches, both with the training selection ("fvu",
    "l0") and with the JumpReLU inference encoder ("fvu_jumprelu", "l0_jumprelu"), plus the dead fraction.
    Changes no state (eval mode, no_grad, no stat updates; the mode is restored)."""
    from .. import ops

    was_training = model.training
    model.eval()
    sse = sse_j = sum_y = None
    sum_y2 = 0.0  # the variance from running sums in float64: one pass, around the mean of every batch together
    l0 = l0_j = 0.0
    n = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            out = model(x, y, update_stats=False)
            ys = y.float() * model.y_scale
            y64 = ys.double()
            sum_y = y64.sum(0) if sum_y is None else sum_y + y64.sum(0)
            sum_y2 += float(y64.pow(2).sum())
            s = out.mse.float() * ys.numel()
            acts = model.encode(x)  # JumpReLU
            acts = type(acts)(
                acts.values.to(model.W_dec.dtype), acts.indices, acts.row_offsets, acts.num_latents
            )
            r = ops.nested_decode(acts, model.W_dec, model.b_dec, model.group_ends).float()  # [m, N, d]
            skip = model.skip_scaled(x)  # the affine skip term of every prefix (None without one)
            if skip is not None:
                r = r + skip.float()
            sj = (r - ys).pow(2).sum(dim=(1, 2))
            sse = s if sse is None else sse + s
            sse_j = sj if sse_j is None else sse_j + sj
            l0 += float(out.l0) * x.shape[0]
            l0_j += float(acts.l0().sum())
            n += x.shape[0]
    finally:
        model.train(was_training)
    if not n:
        return None
    var = max(sum_y2 - float(sum_y.pow(2).sum()) / n, 1e-30)
    return {
        "tokens": n,
        "fvu": (sse / var).tolist(),
        "l0": l0 / n,
        "fvu_jumprelu": (sse_j / var).tolist(),
        "l0_jumprelu": l0_j / n,
        "dead_fraction": float(model.dead_mask().float().mean()),
    }


class RunLogger:
    """Metrics to W&B (online, offline or disabled), to `metrics.jsonl` in the run folder, and a tqdm bar."""

    def __init__(
        self,
        run_dir: str,
        config: dict[str, Any],
        total_tokens: int,
        initial_tokens: int = 0,
        wandb_mode: str = "offline",
        wandb_project: str = "matryoshka-ext",
        wandb_entity: str | None = None,
        run_name: str | None = None,
        wandb_id: str | None = None,
        progress: bool = True,
    ) -> None:
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a")
        self.wandb_run = None
        self.wandb_id = wandb_id
        if wandb_mode != "disabled":
            import uuid

            import wandb

            if wandb_id is None:  # kept in checkpoints, so a resumed run continues the same W&B run
                wandb_id = uuid.uuid4().hex[:12]
            self.wandb_id = wandb_id
            self.wandb_run = wandb.init(
                project=wandb_project,
                entity=wandb_entity,
                name=run_name,
                id=wandb_id,
                resume="allow",
                mode=wandb_mode,
                dir=os.environ.get("WANDB_DIR", run_dir),
                config=config,
                settings=wandb.Settings(silent=True),
            )
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_tokens,
                initial=initial_tokens,
                unit="tok",
                unit_scale=True,
                dynamic_ncols=True,
                desc="train",
            )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.bar is not None:
            fvus = [v for k, v in metrics.items() if k.startswith("prefix_") and k.endswith("/fvu")]
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.3g}",
                fvu="/".join(f"{v:.2f}" for v in fvus),
                l0=f"{metrics['l0_norm']:.1f}",
                dead=f"{metrics['dead_features_percentage']:.1f}%",
                lr=f"{metrics['learning_rate']:.2e}",
                refresh=False,
            )

    def advance(self, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(tokens)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in values.items():
                self.wandb_run.summary[k] = v

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
