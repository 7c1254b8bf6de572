"""Atomic, pickle-free training checkpoints.

Layout of one checkpoint (a folder):  <run_dir>/checkpoints/step_000001234/
    model.safetensors       the transcoder's state_dict (unfolded: scales and counters included)
    optimizer.safetensors   the optimiser state's tensors; its structure is in state.json
    state.safetensors       other tensors (RNG states, data-source tensors)
    state.json              config, step, tokens seen, scheduler, RNG, data position (tensors by reference)

Atomicity: everything is written into a hidden temp folder next to the target, each file fsynced, then the
folder is renamed into place and the parent fsynced, so a crash leaves either the old set or the new one.
Only the newest `keep_last` step_* folders are kept.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from .serialize import flatten_state, fsync_dir, load_tensors, save_json, save_tensors, unflatten_state

CKPT_DIRNAME = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors on CPU, everything else as saved."""

    path: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU and every CUDA device), Python `random` and NumPy (if importable) RNG states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def checkpoint_dirs(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the finished checkpoints of a run, oldest first."""
    root = os.path.join(run_dir, CKPT_DIRNAME)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_RE.match(name)
        if m and os.path.isfile(os.path.join(root, name, "state.json")):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder itself, or the latest checkpoint of a run folder (or of its checkpoints/)."""
    if os.path.isfile(os.path.join(path, "state.json")):
        return path
    for run_dir in (path, os.path.dirname(os.path.normpath(path))):
        found = checkpoint_dirs(run_dir)
        if found:
            return found[-1][1]
    raise FileNotFoundError(f"no checkpoint found in {path!r} (expected step_* folders with state.json)")


def save_checkpoint(
    run_dir: str,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 3,
) -> str:
    """Write checkpoint `step` atomically under run_dir/checkpoints and prune to the newest `keep_last`.

    `state` may nest tensors, tuples and numpy arrays (RNG states, data position); it must not need pickle.
    Returns the checkpoint folder.
    """
    root = os.path.join(run_dir, CKPT_DIRNAME)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{step:09d}")
    tmp = tempfile.mkdtemp(prefix=f".tmp-step_{step:09d}-", dir=root)
    try:
        save_tensors(
            os.path.join(tmp, "model.safetensors"), {k: v.detach().cpu() for k, v in model_state.items()}
        )
        opt_tree, opt_tensors = flatten_state(optimizer_state, "opt")
        save_tensors(os.path.join(tmp, "optimizer.safetensors"), opt_tensors)
        state_tree, state_tensors = flatten_state(state, "state")
        save_tensors(os.path.join(tmp, "state.safetensors"), state_tensors)
        save_json(os.path.join(tmp, "state.json"), {"step": step, "optimizer": opt_tree, "state": state_tree})
        fsync_dir(tmp)
        old = None
        if os.path.exists(final):  # rewriting the same step: move the old one aside first
            old = final + f".old-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep_last)
    return final


def prune_checkpoints(run_dir: str, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (and stale temp folders)."""
    found = checkpoint_dirs(run_dir)
    for _, path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)
    root = os.path.join(run_dir, CKPT_DIRNAME)
    for name in os.listdir(root):
        if name.startswith(".tmp-step_") and not name.endswith(f"-{os.getpid()}"):
            # temp folders of crashed writers; ours are renamed or removed before we get here
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def load_checkpoint_config(path: str) -> Any:
    """The TrainConfig stored in a checkpoint (or a run folder's latest), without loading tensors."""
    import json

    from ..config import TrainConfig

    with open(os.path.join(resolve_checkpoint(path), "state.json")) as fh:
        meta = json.load(fh)
    return TrainConfig.from_dict(unflatten_state(meta["state"]["__map__"]["config"], {}))


def load_checkpoint(path: str) -> Checkpoint:
    """Load a checkpoint folder (or a run folder's latest). Tensors land on CPU; no pickle is involved."""
    import json

    path = resolve_checkpoint(path)
    with open(os.path.join(path, "state.json")) as fh:
        meta = json.load(fh)
    model = load_tensors(os.path.join(path, "model.safetensors"))
    optimizer = unflatten_state(meta["optimizer"], load_tensors(os.path.join(path, "optimizer.safetensors")))
    state = unflatten_state(meta["state"], load_tensors(os.path.join(path, "state.safetensors")))
    state.setdefault("step", meta["step"])
    return Checkpoint(path=path, model=model, optimizer=optimizer, state=state)
