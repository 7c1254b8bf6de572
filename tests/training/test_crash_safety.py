"""Crash safety: `matryoshka-ext train` killed with SIGKILL (mid-step or mid-checkpoint-write) leaves a newest
complete checkpoint that loads, and resuming from it ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from matryoshka_ext.training.checkpoint import checkpoint_dirs, load_checkpoint

from .test_cli import ROOT, SMALL

STEPS, EVERY = 30, 5
ARGS = [*SMALL, "--total-tokens", str(64 * STEPS), "--ckpt-every", str(EVERY), "--keep-last", "10"]


def _train(out: str, *extra: str, env: dict[str, str] | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "matryoshka_ext.cli", "train", *ARGS, "--out-dir", out, "--run-name", "r", *extra]
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    full_env.pop("MATRYOSHKA_EXT_FAULT", None) if not env else None
    p = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return p
    out_text, _ = p.communicate(timeout=600)
    return p.returncode, out_text


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = str(tmp_path_factory.mktemp("ref"))
    rc, text = _train(out)
    assert rc == 0, text
    ck = load_checkpoint(os.path.join(out, "r"))
    assert ck.state["step"] == STEPS
    return ck.model


def _resume_and_compare(run: str, reference: dict[str, torch.Tensor]) -> None:
    rc, text = _train(os.path.dirname(run), "--resume", run)
    assert rc == 0, text
    ck = load_checkpoint(run)
    assert ck.state["step"] == STEPS
    for k, v in reference.items():
        assert torch.equal(ck.model[k], v), f"{k} differs from the uninterrupted run"
    root = os.path.join(run, "checkpoints")
    assert not [n for n in os.listdir(root) if n.startswith(".tmp")], "the crashed write's temp folder was left"


def test_sigkill_during_checkpoint_writes(tmp_path, reference):
    """One run killed four times, once at each point of a checkpoint write, resumed after each crash."""
    out = str(tmp_path)
    run = os.path.join(out, "r")
    # (fault point, checkpoint step it hits, newest complete checkpoint afterwards)
    crashes = [("after-model", 10, 5), ("before-manifest", 10, 5), ("before-rename", 15, 10), ("before-prune", 20, 20)]
    for i, (point, step, newest) in enumerate(crashes):
        resume = ["--resume", run] if i else []
        rc, text = _train(out, *resume, env={"MATRYOSHKA_EXT_FAULT": f"{point}:{step}"})
        assert rc == -signal.SIGKILL, f"{point}: {text}"
        assert [s for s, _ in checkpoint_dirs(run)][-1] == newest, point
        ck = load_checkpoint(run)  # the newest complete checkpoint loads and verifies
        assert ck.state["step"] == newest, point
    _resume_and_compare(run, reference)


def test_sigkill_at_an_arbitrary_moment(tmp_path, reference):
    """Killed from outside once a few checkpoints exist (wherever the process happens to be)."""
    out = str(tmp_path)
    run = os.path.join(out, "r")
    p = _train(out, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        if len(checkpoint_dirs(run)) >= 2:
            break
        time.sleep(0.01)
    assert p.poll() is None, "the run finished before it could be killed: " + p.communicate()[0]
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    newest = checkpoint_dirs(run)[-1][0]
    assert EVERY * 2 <= newest < STEPS
    assert load_checkpoint(run).state["step"] == newest
    _resume_and_compare(run, reference)


def test_sigterm_checkpoints_and_resumes(tmp_path, reference):
    """SIGTERM (a scheduler's preemption notice) stops after the current step with a checkpoint at that step and
    exit status 0; resuming from it ends where the uninterrupted run ends."""
    out = str(tmp_path)
    run = os.path.join(out, "r")
    p = _train(out, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None and not checkpoint_dirs(run):
        time.sleep(0.01)
    assert p.poll() is None, "the run finished before it could be stopped: " + p.communicate()[0]
    p.send_signal(signal.SIGTERM)
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 0, text
    assert "SIGTERM: checkpointing after this step" in text and "--resume" in text
    ck = load_checkpoint(run)
    assert EVERY <= ck.state["step"] < STEPS
    _resume_and_compare(run, reference)
