"""`matryoshka-ext train` argument handling, a synthetic run end to end, resume through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from matryoshka_ext import cli
from matryoshka_ext.config import TrainConfig
from matryoshka_ext.training.checkpoint import checkpoint_dirs, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = [
    "--model-name", "synthetic",
    "--batch-tokens", "64",
    "--transcoder.dict-size", "64",
    "--group-sizes", "8,8,16,32",
    "--k", "4",
    "--aux-k", "8",
    "--dead-tokens", "256",
    "--lr", "3e-3",
    "--warmup-steps", "5",
    "--eval-tokens", "256",
    "--wandb-mode", "disabled",
    "--progress", "false",
    "--device", "cpu",
]  # fmt: skip


def test_print_config_defaults_are_the_offline_default(capsys):
    assert cli.main(["train", "--print-config"]) == 0
    cfg = TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert cfg == TrainConfig() and cfg.model_name == "gemma-3-270m-offline"


def test_invalid_config_exit_code(capsys):
    assert cli.main(["train", "--transcoder.group-sizes", "1,2"]) == 2
    assert "group_sizes must sum to dict_size" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out


def test_register_command(capsys):
    seen = {}
    cli.register_command(
        "hello", "say hello", lambda p: p.add_argument("--who"), lambda a: seen.update(who=a.who)
    )
    try:
        assert cli.main(["hello", "--who", "you"]) == 0
        assert seen == {"who": "you"}
    finally:
        cli.COMMANDS.pop("hello")


def test_train_and_resume_synthetic(tmp_path, capsys):
    out = str(tmp_path)
    argv = [
        "train",
        *SMALL,
        "--total-tokens",
        "1280",
        "--ckpt-every",
        "10",
        "--out-dir",
        out,
        "--run-name",
        "r",
    ]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "prefix 4 (latents [0, 64)): FVU" in text and "dead latents" in text and "checkpoint:" in text
    run = os.path.join(out, "r")
    assert [s for s, _ in checkpoint_dirs(run)] == [10, 20]
    assert os.path.isfile(os.path.join(run, "transcoder", "model.safetensors"))
    # extend the finished run by 10 steps: the checkpoint's config is the base, flags override it
    assert cli.main(["train", "--resume", run, "--total-tokens", "1920", "--progress", "false"]) == 0
    ck = load_checkpoint(run)
    assert ck.state["step"] == 30 and ck.state["config"]["total_tokens"] == 1920
    assert ck.state["config"]["transcoder"]["dict_size"] == 64
    # a second fresh run with the same name goes to a new folder instead of clobbering the first
    assert cli.main(argv) == 0
    assert os.path.isdir(os.path.join(out, "r-2"))


def test_config_file_and_module_entry_point(tmp_path):
    path = tmp_path / "c.yaml"
    TrainConfig(model_name="synthetic", lr=0.01).save(path)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "matryoshka_ext.cli",
            "train",
            "--config",
            str(path),
            "--k",
            "8",
            "--print-config",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    cfg = TrainConfig.from_dict(yaml.safe_load(res.stdout))
    assert cfg.model_name == "synthetic" and cfg.lr == 0.01 and cfg.transcoder.k == 8


@pytest.mark.parametrize("flag", ["--wandb-mode", "--wandb_mode"])
def test_flag_spellings(flag, capsys):
    assert cli.main(["train", flag, "disabled", "--print-config"]) == 0
    assert "wandb_mode: disabled" in capsys.readouterr().out


def test_ctrl_c_during_setup_exits_130_without_a_traceback(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the model loads or activations are cached: no run to save yet, so a clean exit 130."""
    from matryoshka_ext.training import pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build_data", interrupted)
    assert cli.main(["train", *SMALL, "--out-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("step_*"))  # no checkpoint written


@pytest.mark.parametrize("interrupted", [False, True])
def test_summary_of_a_run_stopped_before_its_first_logged_step(tmp_path, interrupted):
    """No metrics and no evaluation yet: the summary still says what was trained and where it is."""
    from matryoshka_ext.training.trainer import TrainResult

    run = str(tmp_path / "r")
    res = TrainResult(run, run + "/step_00000001", run + "/transcoder", 1, 64, 0.5, interrupted=interrupted)
    lines = res.summary_lines()
    assert lines[0] == "trained 1 steps, 64 tokens in 0 s" and lines[-1].startswith("checkpoint: ")
    assert any(f"--resume {run}" in line for line in lines) == interrupted
