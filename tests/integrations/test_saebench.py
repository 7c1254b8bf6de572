"""SAEBench adapter: the interface its custom-SAE evaluations read (checked here without sae-bench), and its
sparse-probing evaluation (encode-only) run offline with the real sae-bench in .venv-saebench."""

from __future__ import annotations

import pytest
import torch

from matryoshka_ext.integrations import SAEBenchTranscoder

from ._peers import run_peer


def test_interface(saved, transcoders, probe_x):
    sae = SAEBenchTranscoder(saved[1], layer=1)
    cfg = sae.cfg
    assert cfg.hook_name == "blocks.1.ln2.hook_normalized" and cfg.hook_layer == 1
    assert cfg.hook_name_out == "blocks.1.hook_mlp_out"
    assert (cfg.d_in, cfg.d_sae, cfg.dtype) == (64, 256, "float32") and cfg.apply_b_dec_to_input is False
    for field in (
        "model_name",
        "context_size",
        "hook_head_index",
        "prepend_bos",
        "normalize_activations",
        "dataset_path",
        "seqpos_slice",
        "finetuning_scaling_factor",
        "architecture",
    ):
        assert hasattr(cfg, field), field
    assert sae.W_enc.shape == (64, 256) and sae.W_dec.shape == (256, 64)
    assert sae.b_enc.shape == (256,) and sae.b_dec.shape == (64,)
    assert sae.device == torch.device("cpu") and sae.dtype == torch.float32 and sae.check_decoder_norms()
    tc = transcoders[1]
    bld = probe_x[:60].reshape(4, 15, 64)  # SAEBench encodes [batch, seq, d_model]
    f = sae.encode(bld)
    assert f.shape == (4, 15, 256)
    torch.testing.assert_close(
        f.reshape(60, 256), tc.encode(probe_x[:60]).to_dense() / tc.y_scale, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(sae(bld).reshape(60, 64), tc.reconstruct(probe_x[:60]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        sae.decode(f, prefix=2).reshape(60, 64), tc.decode(tc.encode(probe_x[:60]), 2), rtol=1e-5, atol=1e-5
    )
    sae.to(dtype=torch.bfloat16)
    assert sae.dtype == torch.bfloat16 and sae.cfg.dtype == "bfloat16" and sae.threshold.dtype == torch.float32
    assert sae.encode(bld).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="hook sites"):
        SAEBenchTranscoder(transcoders[1])  # in memory: sites unknown unless given


def test_sparse_probing_eval_offline(saved, tmp_path):
    res = run_peer("saebench", "saebench_peer.py", saved[1], 1, tmp_path / "artifacts", timeout=600)
    assert res["hook_name"] == "blocks.1.ln2.hook_normalized"
    assert res["classes"] == ["de", "en", "es", "fr", "nl"]
    r = res["results"]
    for key in ("llm_test_accuracy", "sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_5_test_accuracy"):
        assert 0.0 <= r[key] <= 1.0, (key, r)
    assert r["sae_test_accuracy"] > 0.55  # probes on the transcoder latents beat chance (0.5, balanced classes)
