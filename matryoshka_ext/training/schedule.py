"""Learning-rate schedule: linear warmup, then cosine decay to min_lr (reached at the last step)."""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_at(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based) in a run of `total_steps` steps.

    Warmup: lr * (step + 1) / warmup_steps for step < warmup_steps, so step 0 is never 0 and step
    warmup_steps - 1 reaches lr. Then cosine from lr (step == warmup_steps) down to min_lr, which the last
    step (total_steps - 1) uses.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = total_steps - 1 - warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets the optimiser's learning rate for each step; its state is just the step counter."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, lr: float, min_lr: float, warmup_steps: int
    ) -> None:
        self.optimizer = optimizer
        self.total_steps, self.lr, self.min_lr, self.warmup_steps = total_steps, lr, min_lr, warmup_steps
        self.step_count = 0
        self._apply()

    def current_lr(self) -> float:
        return lr_at(self.step_count, self.total_steps, self.lr, self.min_lr, self.warmup_steps)

    def _apply(self) -> None:
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Advance to the next optimiser step (call after optimizer.step())."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
