"""``matryoshka-ext export`` (``export_command``) on a real training run folder, and the hub folder / upload."""

from __future__ import annotations

import argparse
import json
import time

import pytest
import torch
import yaml

from matryoshka_ext.integrations import build_hub_folder, push_to_hub
from matryoshka_ext.integrations.commands import add_export_arguments, export_command
from matryoshka_ext.integrations.hub import HubUnavailableError

from ._peers import import_peer


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_export_arguments(p)
    return export_command(p.parse_args(argv))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real `train` run (synthetic activations, layer 3, d 32 -> 32): what users pass as CHECKPOINT."""
    from matryoshka_ext.config import TrainConfig, TranscoderConfig
    from matryoshka_ext.training import run_training

    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(
        model_name="synthetic",
        layer=3,
        batch_tokens=64,
        total_tokens=1280,
        warmup_steps=2,
        eval_tokens=0,
        wandb_mode="disabled",
        progress=False,
        device="cpu",
        out_dir=str(out),
        run_name="r",
        transcoder=TranscoderConfig(d_in=32, d_out=32, dict_size=64, group_sizes=[8, 8, 16, 32], k=4, aux_k=0),
    )
    run_training(cfg)
    return out / "r"


def test_export_all_formats_from_run_folder(run_dir, tmp_path, capsys):
    sl, ct, dl = tmp_path / "sl", tmp_path / "ct", tmp_path / "dl"
    rc = _run(
        [
            str(run_dir),
            "--to",
            "saelens",
            str(sl),
            "--to",
            "circuit-tracer",
            str(ct),
            "--to",
            "dictionary-learning",
            str(dl),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((sl / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.ln2.hook_normalized"  # from the run's TrainConfig
    assert cfg["metadata"]["hook_name_out"] == "blocks.3.hook_mlp_out"
    assert cfg["metadata"]["matryoshka_group_sizes"] == [8, 8, 16, 32]
    assert (ct / "layer_3.safetensors").is_file()
    assert yaml.safe_load((ct / "config.yaml").read_text())["complete"] is False  # layers 0-2 missing
    assert "do not cover every layer" in capsys.readouterr().err
    assert (dl / "ae.pt").is_file()
    # what was written computes what the run's transcoder computes
    from matryoshka_ext.integrations import load_dictionary_learning
    from matryoshka_ext.loaders import load_transcoder

    ours = load_transcoder(run_dir)
    x = torch.randn(50, 32)
    for back in (load_transcoder(sl), load_dictionary_learning(dl)):
        torch.testing.assert_close(back(x), ours(x), rtol=1e-5, atol=1e-5)


def test_several_checkpoints_and_errors(run_dir, saved, tmp_path, capsys):
    out = tmp_path / "many"
    assert _run([str(run_dir), str(saved[1]), "--to", "saelens", str(out)]) == 2  # saved[1] records no layer
    assert "layer" in capsys.readouterr().err
    assert _run([str(saved[1]), "--layer", "1", "--to", "saelens", str(out)]) == 0
    assert (out / "cfg.json").is_file()
    assert _run([str(saved[1]), "--layer", "1", "--to", "saelens", str(out)]) == 2  # exists
    assert _run([str(saved[1]), "--layer", "1", "--to", "bogus", str(out)]) == 2
    assert _run([str(saved[1])]) == 2
    assert _run([str(saved[1]), "--layer", "1", "--to", "saelens", str(out), "--overwrite"]) == 0


def test_hub_folder_layout(saved, tmp_path):
    sae_lens = import_peer("sae_lens", "sae-lens")
    folder = build_hub_folder({0: saved[0], 1: saved[1]}, tmp_path / "hub", repo_id="me/tc")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "layer_0", "layer_1"]
    readme = (folder / "README.md").read_text()
    assert 'SAE.from_pretrained("me/tc", "layer_0")' in readme and "blocks.1.hook_mlp_out" in readme
    for layer in (0, 1):
        sae = sae_lens.SAE.load_from_disk(str(folder / f"layer_{layer}"))
        assert sae.cfg.metadata.hook_name == f"blocks.{layer}.ln2.hook_normalized"


def test_push_offline_fails_fast_with_folder(saved, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "hubdir"
    t0 = time.monotonic()
    rc = _run([str(saved[1]), "--layer", "1", "--push-to-hub", "me/tc", "--hub-folder", str(folder)])
    assert rc == 3 and time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "unreachable" in err and str(folder) in err and "huggingface-cli upload me/tc" in err
    assert (folder / "layer_1" / "cfg.json").is_file()  # the folder it would upload is there


def test_push_without_token(saved, tmp_path, monkeypatch):
    from matryoshka_ext.data import models

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    folder = build_hub_folder({1: saved[1]}, tmp_path / "hub")
    with pytest.raises(HubUnavailableError, match="no Hugging Face token"):
        push_to_hub(folder, "me/tc")
