"""circuit-tracer export: the real circuit-tracer (in .venv-ctracer) loads the set through its hub/cache loader and
its lazy loader, computes what our transcoders compute, and builds an attribution graph with it."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from matryoshka_ext.integrations import export_circuit_tracer, jumprelu_weights

from ._peers import run_peer


def test_layout(saved, tmp_path):
    out = export_circuit_tracer({0: saved[0], 1: saved[1]}, tmp_path / "ct", n_layers=2)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set" and cfg["complete"] is True
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("ln2.hook_normalized", "hook_mlp_out")
    t = load_file(out / "layer_1.safetensors")
    assert set(t) == {"W_enc", "b_enc", "W_dec", "b_dec", "activation_function.threshold"}
    assert t["W_enc"].shape == (256, 64) and t["W_dec"].shape == (256, 64)  # W_enc stored [d_sae, d_model]
    part = export_circuit_tracer({1: saved[1]}, tmp_path / "part", n_layers=2)
    assert yaml.safe_load((part / "config.yaml").read_text())["complete"] is False
    odd = jumprelu_weights(saved[0], input_hook="blocks.0.hook_resid_mid", output_hook="blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="same relative hooks"):
        export_circuit_tracer([odd, jumprelu_weights(saved[1], layer=1)], tmp_path / "odd")
    with pytest.raises(ValueError, match="layer of"):
        export_circuit_tracer([saved[1]], tmp_path / "nolayer")


def test_loads_and_attributes_in_circuit_tracer(saved, transcoders, probe_x, tmp_path):
    cache = tmp_path / "cache"
    export_circuit_tracer({0: saved[0], 1: saved[1]}, cache / "mx" / "set", n_layers=2)
    save_file({"x": probe_x.contiguous()}, tmp_path / "x.safetensors")
    res = run_peer("ctracer", "ct_peer.py", cache, "mx/set", tmp_path / "x.safetensors", tmp_path / "out.safetensors")
    assert res["n_layers"] == 2 and res["hooks"] == ["ln2.hook_normalized", "hook_mlp_out"]
    assert res["n_active_features"] > 0 and 0 <= res["max_feature_index"] < 256 and res["finite"]
    got = load_file(tmp_path / "out.safetensors")
    for layer, tc in transcoders.items():
        with torch.no_grad():
            a = tc.encode(probe_x).to_dense() / tc.y_scale
            r = tc.reconstruct(probe_x)
        torch.testing.assert_close(got[f"acts_{layer}"], a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[f"recon_{layer}"], r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[f"recon_sparse_{layer}"], r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["recon_lazy_1"], transcoders[1].reconstruct(probe_x), rtol=1e-5, atol=1e-5)
