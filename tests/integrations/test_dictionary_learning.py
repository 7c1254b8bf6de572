"""dictionary_learning export: the real package (in .venv-dictlearn) loads ``ae.pt`` + ``config.json`` through
``utils.load_dictionary`` as a ``MatryoshkaBatchTopKSAE`` (or ``JumpReluAutoEncoder``) computing our transcoder;
its BatchTopK encode selects what ``mx.batch_topk`` selects; we read the folders back with weights_only loads."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

import matryoshka_ext as mx
from matryoshka_ext.integrations import export_dictionary_learning, load_dictionary_learning

from ._peers import run_peer
from .conftest import GROUPS


def test_layout_and_import_back(saved, transcoders, probe_x, tmp_path):
    out = export_dictionary_learning(saved[1], tmp_path / "dl", layer=1)
    sd = torch.load(out / "ae.pt", weights_only=True)  # tensors only: loads without unpickling objects
    assert set(sd) == {"k", "threshold", "group_sizes", "W_enc", "b_enc", "W_dec", "b_dec"}
    assert sd["k"].dtype == torch.int32 and sd["group_sizes"].tolist() == GROUPS
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trainer"]["dict_class"] == "MatryoshkaBatchTopKSAE" and cfg["trainer"]["k"] == 8
    assert cfg["transcoder"]["output_hook"] == "blocks.1.hook_mlp_out"
    back = load_dictionary_learning(out)
    assert back.prefix_ends == [32, 64, 128, 256]
    tc = transcoders[1]
    torch.testing.assert_close(back(probe_x), tc.reconstruct(probe_x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        back.decode(back.encode(probe_x), 2), tc.decode(tc.encode(probe_x), 2), rtol=1e-5, atol=1e-5
    )


def test_loads_in_dictionary_learning(saved, transcoders, probe_x, tmp_path):
    mat = export_dictionary_learning(saved[1], tmp_path / "mat", layer=1)
    jr = export_dictionary_learning(saved[0], tmp_path / "jr", layer=0, dict_class="JumpReluAutoEncoder")
    save_file({"x": probe_x.contiguous()}, tmp_path / "x.safetensors")
    info = run_peer("dictlearn", "dl_peer.py", mat, jr, tmp_path / "x.safetensors", tmp_path / "out.safetensors")
    assert info["mat"]["class"] == "MatryoshkaBatchTopKSAE" and info["jr"]["class"] == "JumpReluAutoEncoder"
    assert info["mat"]["group_sizes"] == GROUPS and info["mat"]["k"] == 8
    got = load_file(tmp_path / "out.safetensors")
    for tag, tc in (("mat", transcoders[1]), ("jr", transcoders[0])):
        with torch.no_grad():
            a = tc.encode(probe_x).to_dense() / tc.y_scale
            r = tc.reconstruct(probe_x)
        torch.testing.assert_close(got[f"{tag}_acts"], a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[f"{tag}_recon"], r, rtol=1e-5, atol=1e-5)
    # training-time selection: their BatchTopK over the exported weights == ours on the folded pre-activations
    tc = transcoders[1]
    with torch.no_grad():
        pre = tc.pre_activations(probe_x) / tc.y_scale
    ours = mx.batch_topk(pre.contiguous(), 8).to_dense()
    torch.testing.assert_close(got["mat_batchtopk"], ours, rtol=1e-5, atol=1e-5)
