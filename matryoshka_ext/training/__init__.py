"""Training: schedule, optimiser, pickle-free checkpoints, metrics/W&B, activation streams and the Trainer.

`run_training(cfg)` is what `matryoshka-ext train` runs: it builds the activation stream the config asks for
(the language model is only imported and loaded here), then a `Trainer`.
"""

from .checkpoint import (
    CorruptCheckpointError,
    load_checkpoint,
    load_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from .schedule import WarmupCosine, lr_at
from .sources import CachedActivations, SyntheticActivations, write_activation_cache
from .trainer import NonFiniteTrainingError, Trainer, TrainResult

__all__ = [
    "CachedActivations",
    "CorruptCheckpointError",
    "SyntheticActivations",
    "NonFiniteTrainingError",
    "TrainResult",
    "Trainer",
    "WarmupCosine",
    "load_checkpoint",
    "load_checkpoint_config",
    "lr_at",
    "resolve_checkpoint",
    "run_training",
    "save_checkpoint",
    "verify_checkpoint",
    "write_activation_cache",
]


def run_training(cfg, **kwargs):  # noqa: ANN001, ANN201 - thin lazy wrapper, documented in .pipeline
    """Build data and a Trainer from `cfg` and train (see `matryoshka_ext.training.pipeline.run_training`)."""
    from .pipeline import run_training as _run

    return _run(cfg, **kwargs)
