"""W&B offline mode writes a local run folder without an account; disabled mode touches nothing."""

from __future__ import annotations

import json
import os

import pytest

from matryoshka_ext.training.metrics import RunLogger

pytest.importorskip("wandb")


def test_offline_run_dir(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wb"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "run"
    log = RunLogger(str(run_dir), {"lr": 1e-3}, total_tokens=10, wandb_mode="offline", progress=False)
    metrics = {
        "loss": 1.0,
        "l0_norm": 4.0,
        "prefix_1/fvu": 0.5,
        "dead_features_percentage": 0.0,
        "learning_rate": 1.0,
    }
    log.log(metrics, step=1)
    log.summary({"eval/prefix_1/fvu": 0.4})
    run_id = log.wandb_id
    log.close()
    runs = [d for d in os.listdir(wandb_dir / "wandb") if d.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].endswith(run_id)
    files = os.listdir(wandb_dir / "wandb" / runs[0])
    assert any(f.endswith(".wandb") for f in files)
    with open(run_dir / "metrics.jsonl") as fh:
        assert json.loads(fh.readline())["loss"] == 1.0


def test_disabled_writes_no_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    log = RunLogger(str(tmp_path / "run"), {}, total_tokens=10, wandb_mode="disabled", progress=False)
    log.log({"loss": 1.0, "l0_norm": 1.0, "dead_features_percentage": 0.0, "learning_rate": 1.0}, step=1)
    log.close()
    assert not os.path.exists(tmp_path / "wandb") and log.wandb_run is None
