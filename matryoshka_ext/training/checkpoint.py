"""Atomic, pickle-free training checkpoints.

Layout of one checkpoint (a folder):  <run_dir>/checkpoints/step_000001234/
    model.safetensors       the transcoder's state_dict (unfolded: scales and counters included)
    optimizer.safetensors   the optimiser state's tensors; its structure is in state.json
    state.safetensors       other tensors (RNG states, data-source tensors)
    state.json              config, step, tokens seen, scheduler, RNG, data position (tensors by reference)
    manifest.json           sha256 and size of each file above; written last

Atomicity: everything is written into a hidden temp folder next to the target, each file fsynced, then the
folder is renamed into place and the parent fsynced, so a crash leaves either the old set or the new one.
Integrity: a folder without a manifest is incomplete; loading checks every file against it, so a truncated or
bit-flipped checkpoint raises `CorruptCheckpointError` instead of loading garbage, and resolving a run folder
skips it (with a warning) in favour of the newest checkpoint that verifies. Only the newest `keep_last` step_*
folders are kept.

`MATRYOSHKA_EXT_FAULT=<point>:<step>` kills the process with SIGKILL at a named point of the write of checkpoint
<step> (points: after-model, before-manifest, before-rename, before-prune): the crash-safety tests use it to
die mid-write deterministically.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .serialize import flatten_state, fsync_dir, save_json, unflatten_state, write_bytes_durably

CKPT_DIRNAME = "checkpoints"
MANIFEST = "manifest.json"
_STEP_RE = re.compile(r"^step_(\d+)$")
T = TypeVar("T")
_FILES = ("model.safetensors", "optimizer.safetensors", "state.safetensors", "state.json")


class CorruptCheckpointError(RuntimeError):
    """A checkpoint folder whose files are missing, truncated or do not match their recorded checksums."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"checkpoint {path} is corrupt or incomplete: {reason}")
        self.path, self.reason = path, reason


def _fault_point(name: str, step: int) -> None:
    """Crash-test hook: SIGKILL ourselves at `name` while writing checkpoint `step` (see module docstring)."""
    spec = os.environ.get("MATRYOSHKA_EXT_FAULT")
    if spec and spec == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _write_file(folder: str, name: str, data: bytes, digests: dict[str, dict[str, Any]]) -> None:
    write_bytes_durably(os.path.join(folder, name), data)
    digests[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _read_verified(path: str, name: str, manifest: dict[str, Any]) -> bytes:
    entry = manifest["files"].get(name)
    if entry is None:
        raise CorruptCheckpointError(path, f"{name} is not listed in {MANIFEST}")
    try:
        with open(os.path.join(path, name), "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise CorruptCheckpointError(path, f"cannot read {name}: {e}") from None
    if len(data) != entry["bytes"]:
        raise CorruptCheckpointError(path, f"{name} has {len(data)} bytes, the manifest says {entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CorruptCheckpointError(path, f"{name} does not match its sha256 in {MANIFEST}")
    return data


def _read_manifest(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, MANIFEST)) as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise CorruptCheckpointError(path, f"no {MANIFEST} (the write did not finish)") from None
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(path, f"unreadable {MANIFEST}: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptCheckpointError(path, f"{MANIFEST} has no file table")
    return manifest


def verify_checkpoint(path: str) -> None:
    """Check every file of checkpoint folder `path` against its manifest; raises CorruptCheckpointError."""
    manifest = _read_manifest(path)
    for name in _FILES:
        _read_verified(path, name, manifest)


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
    """(step, path) of the checkpoints of a run whose write finished (a manifest exists), oldest first.

    Their contents are not verified here; `resolve_checkpoint` and `load_checkpoint` do that."""
    root = os.path.join(run_dir, CKPT_DIRNAME)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_RE.match(name)
        if m and os.path.isfile(os.path.join(root, name, MANIFEST)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def _is_checkpoint_folder(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in (MANIFEST, "state.json"))


def _first_good(path: str, read: Callable[[str], T]) -> tuple[str, T]:
    """(folder, read(folder)) for checkpoint folder `path` itself, or for the newest checkpoint of a run folder
    (or of its checkpoints/) whose `read` does not raise CorruptCheckpointError; newer ones that do are skipped
    with a warning naming the problem.

    Raises CorruptCheckpointError for a corrupt checkpoint folder given directly, or when a run has
    checkpoints but none reads; FileNotFoundError when there are none."""
    if _is_checkpoint_folder(path) and _STEP_RE.match(os.path.basename(os.path.normpath(path))):
        return path, read(path)
    for run_dir in (path, os.path.dirname(os.path.normpath(path))):
        found = checkpoint_dirs(run_dir)
        if not found:
            continue
        errors = []
        for _, ckpt in reversed(found):
            try:
                return ckpt, read(ckpt)
            except CorruptCheckpointError as e:
                errors.append(e)
                warnings.warn(f"{e}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=3)
        raise CorruptCheckpointError(
            found[-1][1], "no checkpoint of this run verifies: " + "; ".join(e.reason for e in errors)
        )
    if _is_checkpoint_folder(path):  # a checkpoint folder under another name: checked all the same
        return path, read(path)
    raise FileNotFoundError(f"no checkpoint found in {path!r} (expected step_* folders with {MANIFEST})")


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder itself (verified), or the newest checkpoint of a run folder that verifies (see
    `_first_good` for the fallback and the errors)."""
    return _first_good(path, verify_checkpoint)[0]


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
    from safetensors.torch import save

    root = os.path.join(run_dir, CKPT_DIRNAME)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{step:09d}")
    tmp = tempfile.mkdtemp(prefix=f".tmp-step_{step:09d}-", dir=root)
    digests: dict[str, dict[str, Any]] = {}
    try:
        model_tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        _write_file(tmp, "model.safetensors", save(model_tensors), digests)
        _fault_point("after-model", step)
        opt_tree, opt_tensors = flatten_state(optimizer_state, "opt")
        _write_file(tmp, "optimizer.safetensors", save(opt_tensors), digests)
        state_tree, state_tensors = flatten_state(state, "state")
        _write_file(tmp, "state.safetensors", save(state_tensors), digests)
        meta = {"step": step, "optimizer": opt_tree, "state": state_tree}
        _write_file(tmp, "state.json", json.dumps(meta, indent=1).encode(), digests)
        _fault_point("before-manifest", step)
        save_json(os.path.join(tmp, MANIFEST), {"format": 1, "step": step, "files": digests})
        fsync_dir(tmp)
        _fault_point("before-rename", step)
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
    _fault_point("before-prune", step)
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
    """The TrainConfig stored in a checkpoint (or a run folder's newest verified one), without its tensors."""
    from ..config import TrainConfig

    ckpt = resolve_checkpoint(path)
    meta = json.loads(_read_verified(ckpt, "state.json", _read_manifest(ckpt)))
    return TrainConfig.from_dict(unflatten_state(meta["state"]["__map__"]["config"], {}))


def _load_folder(path: str) -> Checkpoint:
    """Read checkpoint folder `path` once: every file checked against the manifest, then parsed."""
    from safetensors.torch import load

    manifest = _read_manifest(path)
    data = {name: _read_verified(path, name, manifest) for name in _FILES}
    try:
        meta = json.loads(data["state.json"])
        model = load(data["model.safetensors"])
        optimizer = unflatten_state(meta["optimizer"], load(data["optimizer.safetensors"]))
        state = unflatten_state(meta["state"], load(data["state.safetensors"]))
    except (ValueError, KeyError) as e:  # verified bytes that still do not parse: written by something else
        raise CorruptCheckpointError(path, f"unparseable contents: {e}") from None
    state.setdefault("step", meta["step"])
    return Checkpoint(path=path, model=model, optimizer=optimizer, state=state)


def load_checkpoint(path: str) -> Checkpoint:
    """Load a checkpoint folder (or a run folder's newest one that verifies and parses). Each file is read once
    and checked against the manifest before use; tensors land on CPU; no pickle is involved."""
    return _first_good(path, _load_folder)[1]
