"""Skip transcoders across formats: SAELens (``jumprelu_skip_transcoder``, the real sae_lens loads and runs it),
circuit-tracer (``W_skip`` in each layer file; the real circuit-tracer decodes and attributes with it, and its own
files load back), Gemma Scope 2
(``affine_skip_connection``; our loader against circuit-tracer's own), SAEBench (forward includes the skip term),
and dictionary_learning, whose layout has no skip matrix: its export raises instead of dropping W_skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from matryoshka_ext.integrations import (
    SAEBenchTranscoder,
    export_circuit_tracer,
    export_dictionary_learning,
    export_saelens,
    load_saelens_transcoder,
    saelens_to_matryoshka,
)
from matryoshka_ext.loaders import FormatError, load_transcoder

from ._peers import import_peer, run_peer
from .conftest import train_transcoder


@pytest.fixture(scope="module")
def skip_tcs(tiny) -> dict[int, object]:
    """{layer: trained skip MatryoshkaTranscoder} for both layers of ``tiny`` (activation scaling on)."""
    return {layer: train_transcoder(tiny, layer, seed=layer, skip_connection=True) for layer in (0, 1)}


@pytest.fixture(scope="module")
def skip_saved(skip_tcs, tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("skip")
    return {layer: Path(tc.save_pretrained(root / f"L{layer}")) for layer, tc in skip_tcs.items()}


def _skip_matters(tc, x) -> None:
    """Guard: the trained skip term is a real part of the output (so a dropped or transposed W_skip fails)."""
    with torch.no_grad():
        s, r = tc.skip(x), tc.reconstruct(x)
    assert float(s.norm()) > 0.05 * float(r.norm())
    assert float((tc.W_skip - tc.W_skip.T).detach().abs().max()) > 0  # not symmetric: the orientation is tested


def test_saelens_skip_export_loads_and_matches(skip_tcs, skip_saved, probe_x, tmp_path):
    sae_lens = import_peer("sae_lens", "sae-lens")
    tc = skip_tcs[1]
    _skip_matters(tc, probe_x)
    out = export_saelens(skip_saved[1], tmp_path / "sl", layer=1)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_skip_transcoder"
    stored = load_file(out / "sae_weights.safetensors")["W_skip"]
    torch.testing.assert_close(stored, tc.W_skip.detach().T * tc.x_scale / tc.y_scale)  # [d_out, d_in], folded

    sae = sae_lens.SAE.load_from_disk(str(out))
    assert type(sae).__name__ == "JumpReLUSkipTranscoder"
    with torch.no_grad():
        want = tc.reconstruct(probe_x)
        torch.testing.assert_close(sae(probe_x), want, rtol=1e-5, atol=1e-5)
        # back into ours: the loader, and a MatryoshkaTranscoder with skip_connection on
        back = load_saelens_transcoder(out)
        assert back.prefix_ends == [32, 64, 128, 256]
        for prefix in (1, 4):
            torch.testing.assert_close(back.reconstruct(probe_x, prefix), tc.reconstruct(probe_x, prefix),
                                       rtol=1e-5, atol=1e-5)  # fmt: skip
        m = saelens_to_matryoshka(out)
        assert m.cfg.skip_connection
        torch.testing.assert_close(m.reconstruct(probe_x), want, rtol=1e-5, atol=1e-5)


def test_circuit_tracer_skip_layout_and_real_loader(skip_tcs, skip_saved, saved, probe_x, tmp_path):
    cache = tmp_path / "cache"
    out = export_circuit_tracer({0: skip_saved[0], 1: skip_saved[1]}, cache / "mx" / "set", n_layers=2)
    t = load_file(out / "layer_1.safetensors")
    tc = skip_tcs[1]
    _skip_matters(tc, probe_x)
    assert set(t) == {"W_enc", "b_enc", "W_dec", "b_dec", "activation_function.threshold", "W_skip"}
    torch.testing.assert_close(t["W_skip"], tc.W_skip.detach().T * tc.x_scale / tc.y_scale)  # [out, in]
    with pytest.raises(ValueError, match="all skip transcoders or none"):
        export_circuit_tracer({0: saved[0], 1: skip_saved[1]}, tmp_path / "mixed")
    assert yaml.safe_load((out / "config.yaml").read_text())["complete"] is True

    save_file({"x": probe_x.contiguous()}, tmp_path / "x.safetensors")
    res = run_peer("ctracer", "ct_peer.py", cache, "mx/set", tmp_path / "x.safetensors", tmp_path / "out.safetensors")
    assert res["skip_connection"] is True and res["n_active_features"] > 0 and res["finite"]
    got = load_file(tmp_path / "out.safetensors")
    for layer, m in skip_tcs.items():
        with torch.no_grad():
            r = m.reconstruct(probe_x)
        torch.testing.assert_close(got[f"recon_{layer}"], r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[f"recon_sparse_{layer}"], r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["recon_lazy_1"], skip_tcs[1].reconstruct(probe_x), rtol=1e-5, atol=1e-5)

    # and back: our loader reads our export (prefixes and sites from config.yaml) and circuit-tracer's own files
    mine = load_transcoder(out / "layer_1.safetensors")
    assert mine.meta["input_hook"] == "blocks.1.ln2.hook_normalized" and mine.prefix_ends == [32, 64, 128, 256]
    theirs = load_transcoder(cache / "resaved" / "layer_1.safetensors")
    with torch.no_grad():
        for prefix in (1, 4):
            want = tc.reconstruct(probe_x, prefix)
            torch.testing.assert_close(mine.reconstruct(probe_x, prefix), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(probe_x), tc.reconstruct(probe_x), rtol=1e-5, atol=1e-5)
    with pytest.raises(FormatError, match="pass one of its layer files"):
        load_transcoder(out)


def _gemma_scope_2_file(path: Path, d: int, F: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Gemma Scope 2 ``params.safetensors`` (its key names and orientations) with a non-symmetric skip matrix."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "w_enc": torch.randn(d, F, generator=g) / d**0.5,
        "w_dec": torch.randn(F, d, generator=g) / F**0.5,
        "b_enc": torch.randn(F, generator=g) * 0.1,
        "b_dec": torch.randn(d, generator=g) * 0.1,
        "threshold": torch.rand(F, generator=g) * 0.5,
        "affine_skip_connection": torch.randn(d, d, generator=g) / d**0.5,  # [d_in, d_out]
    }
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, path / "params.safetensors")
    return t


def test_gemma_scope_2_skip_agrees_with_circuit_tracer_and_exports_to_saelens(probe_x, tmp_path):
    t = _gemma_scope_2_file(tmp_path / "gs2", 64, 128)
    ours = load_transcoder(tmp_path / "gs2")
    with torch.no_grad():
        y = ours(probe_x)
        torch.testing.assert_close(ours.skip(probe_x), probe_x @ t["affine_skip_connection"])
    save_file({"x": probe_x.contiguous()}, tmp_path / "x.safetensors")
    res = run_peer("ctracer", "ct_gs2_peer.py", tmp_path / "gs2" / "params.safetensors", tmp_path / "x.safetensors",
                   tmp_path / "ct.safetensors")  # fmt: skip
    assert res["skip_connection"] is True
    got = load_file(tmp_path / "ct.safetensors")
    torch.testing.assert_close(got["skip"], ours.skip(probe_x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["y"], y, rtol=1e-5, atol=1e-5)

    sae_lens = import_peer("sae_lens", "sae-lens")
    out = export_saelens(ours, tmp_path / "sl", layer=1)
    sae = sae_lens.SAE.load_from_disk(str(out))
    assert type(sae).__name__ == "JumpReLUSkipTranscoder"
    with torch.no_grad():
        torch.testing.assert_close(sae(probe_x), y, rtol=1e-5, atol=1e-5)


def test_dictionary_learning_refuses_skip_and_says_why(skip_saved, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"transcoder argument .* skip transcoder .*W_skip.*saelens or circuit-tracer"):
        export_dictionary_learning(skip_saved[1], tmp_path / "dl", layer=1)
    assert not (tmp_path / "dl" / "ae.pt").exists()  # nothing half-written

    import argparse

    from matryoshka_ext.integrations.commands import add_export_arguments, export_command

    p = argparse.ArgumentParser()
    add_export_arguments(p)
    rc = export_command(p.parse_args([str(skip_saved[1]), "--layer", "1", "--to", "saelens", str(tmp_path / "sl"),
                                      "--to", "dictionary-learning", str(tmp_path / "dl2")]))  # fmt: skip
    assert rc == 2 and "W_skip" in capsys.readouterr().err
    assert not (tmp_path / "sl").exists()  # refused before any format was written


def test_saebench_adapter_forward_includes_skip(skip_tcs, skip_saved, probe_x):
    sb = SAEBenchTranscoder(skip_saved[1], layer=1)
    tc = skip_tcs[1]
    with torch.no_grad():
        torch.testing.assert_close(sb(probe_x), tc.reconstruct(probe_x), rtol=1e-5, atol=1e-5)
        f = sb.encode(probe_x)
        torch.testing.assert_close(sb.decode(f, prefix=2, x=probe_x), tc.reconstruct(probe_x, prefix=2),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        # without x, decode is the sparse part alone (SAEBench's decode-only use)
        torch.testing.assert_close(sb.decode(f) + tc.skip(probe_x), tc.reconstruct(probe_x), rtol=1e-5, atol=1e-5)


def test_spliced_loss_with_skip_matches_saelens(tiny, skip_tcs, skip_saved, tmp_path):
    """Our eval.splice with a skip transcoder == splicing SAELens' JumpReLUSkipTranscoder forward into the same
    model (HookedTransformer hooks), and differs from splicing the sparse part alone (the skip term is really in
    our spliced loss)."""
    sae_lens = import_peer("sae_lens", "sae-lens")
    from sae_lens import HookedSAETransformer

    from matryoshka_ext.data import gemma_sites
    from matryoshka_ext.eval.splice import SpliceStats, splice_batch

    from .conftest import BOS, tiny_tokens

    sae = sae_lens.SAE.load_from_disk(str(export_saelens(skip_saved[1], tmp_path / "sl", layer=1)))
    hst = HookedSAETransformer(tiny.cfg)
    hst.load_state_dict(tiny.state_dict())
    hst.eval()
    tokens = tiny_tokens(6, 32, seed=7)
    keep = tokens != BOS
    ours = load_transcoder(skip_saved[1])
    stats = SpliceStats()
    fns = [("tc", lambda xk: ours.reconstruct(xk)), ("sparse", lambda xk: ours.decode(ours.encode(xk)))]
    splice_batch(tiny, gemma_sites(1), tokens, keep, fns, stats)
    # sae-lens 6.54's HookedSAETransformer splices sae.decode(sae.encode(x)), which leaves W_skip out; splice
    # SAELens' own forward (skip included) at the output site instead, at the same (non-BOS) positions
    site = gemma_sites(1)
    captured: dict[str, torch.Tensor] = {}

    def grab(x, hook):
        captured["x"] = x

    def put(y, hook):
        return torch.where(keep[..., None], sae(captured["x"]).to(y.dtype), y)

    with torch.no_grad():
        logits = hst.run_with_hooks(tokens, fwd_hooks=[(site.input_hook, grab), (site.output_hook, put)])
    scored = keep[:, :-1] & keep[:, 1:]
    targets = tokens[:, 1:][scored]

    def ce(lg: torch.Tensor) -> float:
        lp = torch.log_softmax(lg[:, :-1][scored].double(), -1)
        return float(-lp.gather(1, targets[:, None]).mean())

    assert ce(logits) == pytest.approx(stats.mean_ce("tc"), rel=1e-5)
    assert abs(stats.mean_ce("sparse") - stats.mean_ce("tc")) > 1e-4
