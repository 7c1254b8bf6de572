"""``jumprelu_weights``: what each kind of transcoder reduces to, and what no peer format can represent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matryoshka_ext.integrations import export_dictionary_learning, export_saelens, jumprelu_weights
from matryoshka_ext.loaders import SparseTranscoder, load_transcoder


def _gemma_scope(tmp_path, thr_sign: float = 1.0):
    rng = np.random.default_rng(0)
    d, F = 16, 48
    arrays = dict(
        W_enc=rng.standard_normal((d, F)).astype(np.float32) * 0.5,
        W_dec=rng.standard_normal((F, d)).astype(np.float32),
        b_enc=rng.standard_normal(F).astype(np.float32) * 0.2,
        b_dec=rng.standard_normal(d).astype(np.float32),
        threshold=thr_sign * np.abs(rng.standard_normal(F)).astype(np.float32) * 0.5,
    )
    folder = tmp_path / "layer_3" / "width_16k" / "average_l0_10"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **arrays)
    return folder


def test_gemma_scope_converts(tmp_path):
    folder = _gemma_scope(tmp_path)
    w = jumprelu_weights(folder)
    assert w.layer == 3 and w.input_hook == "blocks.3.ln2.hook_normalized" and not w.ours and w.group_sizes is None
    x = torch.randn(40, 16)
    gs = load_transcoder(folder)
    torch.testing.assert_close(w.reference_forward(x)[1].float(), gs(x), rtol=1e-5, atol=1e-5)
    out = export_saelens(folder, tmp_path / "sl")
    meta = json.loads((out / "cfg.json").read_text())["metadata"]
    assert "prepend_bos" not in meta and "matryoshka_group_sizes" not in meta  # nothing claimed for foreign weights
    torch.testing.assert_close(load_transcoder(out)(x), gs(x), rtol=1e-5, atol=1e-5)
    dl = export_dictionary_learning(folder, tmp_path / "dl")  # per-latent thresholds -> JumpReluAutoEncoder
    assert json.loads((dl / "config.json").read_text())["trainer"]["dict_class"] == "JumpReluAutoEncoder"


def test_refusals(tmp_path, transcoders):
    with pytest.raises(ValueError, match="negative"):
        jumprelu_weights(_gemma_scope(tmp_path, thr_sign=-1.0))
    tc = SparseTranscoder(
        torch.randn(8, 16), torch.zeros(16), torch.randn(16, 8), torch.zeros(8), activation="topk", k=2
    )
    with pytest.raises(ValueError, match="top-k"):
        jumprelu_weights(tc)
    with pytest.raises(ValueError, match="activation_dim"):
        export_dictionary_learning(
            SparseTranscoder(
                torch.randn(8, 16), torch.zeros(16), torch.randn(16, 4), torch.zeros(4), activation="relu"
            ),
            tmp_path / "x",
            layer=0,
        )
    with pytest.raises(TypeError):
        jumprelu_weights(object())


def test_ours_reduces_exactly(transcoders, probe_x):
    tc = transcoders[1]
    w = jumprelu_weights(tc, layer=1)
    assert w.ours and w.group_sizes == [32, 32, 64, 128] and w.k == 8 and w.prefix_ends[-1] == 256
    assert bool((w.threshold == w.threshold[0]).all()) and float(w.threshold[0]) > 0
    a, r = w.reference_forward(probe_x)
    torch.testing.assert_close(r.float(), tc.reconstruct(probe_x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.float(), tc.encode(probe_x).to_dense() / tc.y_scale, rtol=1e-5, atol=1e-5)
    assert w.metadata()["matryoshka_threshold_updates"] > 0
