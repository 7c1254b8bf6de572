"""Train one of our rows with ``matryoshka_ext.training`` (our Trainer, our kernels) on the benchmark's cache.

The TrainConfig is the package's default *at run time* (the lead tunes it during the session), with only the
benchmark's axes overridden: seed, k, tokens, batch and the row's variant:
    matryoshka  the default transcoder config
    plain       group_sizes = [F]: plain BatchTopK, not nested
    seed        prefix_weights = [0, ..., 0, 1]: only the full reconstruction trained, prefixes read off
    skip        the transcoder config's skip-connection switch on (absent in this package version -> raises)
SAE mode trains on (x, x) batches of the same cache (``caches.SaeStream``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import torch

from .caches import train_stream


class RowUnavailable(RuntimeError):
    """The package does not (yet) provide what this row needs."""


def skip_field(tc_cls: Any) -> str | None:
    """Name of the TranscoderConfig field that switches on the affine skip connection, if there is one."""
    for f in dataclasses.fields(tc_cls):
        if "skip" in f.name and f.type in (bool, "bool"):
            return f.name
    return None


def make_config(variant: str, seed: int, k: int, tokens: int | None, out_dir: str) -> Any:
    """The row's TrainConfig: the package default with the benchmark's overrides."""
    from matryoshka_ext.config import TrainConfig, TranscoderConfig

    base = TrainConfig()
    tc = base.transcoder.replace(k=k)
    if variant == "plain":
        tc = tc.replace(group_sizes=[tc.dict_size], prefix_weights=None)
    elif variant == "seed":
        m = len(tc.group_sizes)
        tc = tc.replace(prefix_weights=[0.0] * (m - 1) + [1.0])
    elif variant == "skip":
        name = skip_field(TranscoderConfig)
        if name is None:
            raise RowUnavailable("TranscoderConfig has no skip-connection field in this version")
        tc = tc.replace(**{name: True})
    elif variant != "matryoshka":
        raise ValueError(f"unknown variant {variant!r}")
    tc.validate()
    return base.replace(
        transcoder=tc, seed=seed, total_tokens=tokens or base.total_tokens, out_dir=out_dir, run_name="run",
        wandb_mode="disabled", progress=False, ckpt_every=0, keep_last=1, eval_tokens=0, device="cpu",
    )  # fmt: skip


# fields that say where and how loudly a run is written, not what it trains
_PLACE = ("out_dir", "run_name", "resume")


def training_spec(variant: str, seed: int, k: int, tokens: int | None) -> dict[str, Any]:
    """What determines the trained model (the row's TrainConfig without its output place): a results entry
    whose spec differs from today's defaults is stale and retrained."""
    d = make_config(variant, seed, k, tokens, "").to_dict()
    return {key: v for key, v in d.items() if key not in _PLACE}


def train(variant: str, mode: str, cache: str, run_dir: str, seed: int, k: int, tokens: int | None) -> dict[str, Any]:
    """Train and save under ``run_dir`` (a run folder ``load_transcoder`` reads); returns timing and config.
    ``train_s`` is the Trainer's own wall time, set-up (encoder initialisation) included."""
    from matryoshka_ext.training import Trainer

    cfg = make_config(variant, seed, k, tokens, os.path.dirname(run_dir))
    t0, c0 = time.perf_counter(), time.process_time()
    data = train_stream(cache, cfg.batch_tokens, cfg.seed, mode)
    trainer = Trainer(cfg, data, run_dir, torch.device("cpu"))
    res = trainer.run()
    if res.interrupted:  # a signal stopped it early: not a finished row (run.py must not record it)
        raise KeyboardInterrupt(f"training of {run_dir} interrupted at step {res.step}")
    return {
        "path": run_dir,
        "train_s": res.wall_time_s,
        "total_s": time.perf_counter() - t0,
        "train_cpu_s": time.process_time() - c0,  # CPU seconds of this process: the cost without the box's load
        "steps": res.step,
        "tokens": res.tokens_seen,
        "config": trainer.cfg.to_dict(),
        "threads": torch.get_num_threads(),
    }
