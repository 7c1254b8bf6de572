"""SAELens export: the real ``sae_lens.SAE.load_from_disk`` loads it, computes what our transcoder computes, and
splicing it into ``HookedSAETransformer`` reproduces our spliced loss; SAELens folders import back."""

from __future__ import annotations

import json

import pytest
import torch

from matryoshka_ext.integrations import export_saelens, load_saelens_transcoder, saelens_to_matryoshka
from matryoshka_ext.integrations._common import jumprelu_weights

from ._peers import import_peer
from .conftest import BOS, GROUPS, tiny_tokens


@pytest.fixture(scope="module")
def sae_lens():
    return import_peer("sae_lens", "sae-lens")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_loads_and_matches(sae_lens, saved, transcoders, probe_x, tmp_path, dtype):
    out = export_saelens(saved[1], tmp_path / "sl", layer=1, dtype=dtype)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_transcoder" and cfg["apply_b_dec_to_input"] is False
    meta = cfg["metadata"]
    assert meta["hook_name"] == "blocks.1.ln2.hook_normalized" and meta["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert meta["sae_lens_version"] == sae_lens.__version__
    assert meta["matryoshka_group_sizes"] == GROUPS and meta["matryoshka_k"] == 8

    sae = sae_lens.SAE.load_from_disk(str(out))
    assert type(sae).__name__ == "JumpReLUTranscoder"
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.d_out) == (64, 256, 64)
    assert sae.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    assert str(sae.dtype).endswith(dtype)

    tc = transcoders[1]
    assert int(tc.threshold_updates) > 0 and float(tc.threshold) > 0  # a trained threshold, not the ReLU default
    with torch.no_grad():
        a = sae.encode(probe_x).float()
        r = sae.decode(sae.encode(probe_x)).float()
        a_ours = tc.encode(probe_x).to_dense().float() / tc.y_scale  # ours: scaled units; folded on export
        r_ours = tc.reconstruct(probe_x).float()
    if dtype == "float32":
        torch.testing.assert_close(a, a_ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r, r_ours, rtol=1e-5, atol=1e-5)
    else:  # bf16 weights: compare against the exact reference of the bf16 weights that were written
        w = jumprelu_weights(saved[1], layer=1, dtype="bfloat16")
        xb = probe_x.bfloat16().double()
        a_ref, _ = w.reference_forward(xb)
        assert (a > 0).float().mean() > 0
        # SAELens runs the matmuls in bf16, so a pre-activation within bf16 rounding of the threshold may flip. Flips
        # must be rare and only ever within that rounding bound of the threshold ...
        pre = xb @ w.W_enc.double() + w.b_enc.double()
        thr = w.threshold.double()
        bound = 0.01 * (xb.abs() @ w.W_enc.double().abs() + w.b_enc.double().abs()) + 0.01 * thr.abs()
        flips = (a > 0) != (a_ref > 0)
        assert flips.float().mean() < 0.02
        assert bool(((pre - thr).abs() <= bound)[flips].all()), "a threshold decision flipped far from the threshold"
        # ... and on SAELens's own active set the output is the exact formula up to bf16 rounding.
        r_same_set = (pre * (a > 0)) @ w.W_dec.double() + w.b_dec.double()
        assert float((r - r_same_set).norm() / r_same_set.norm()) < 0.02
    l0 = (a > 0).float().sum(1).mean()
    assert 1 <= l0 <= 64


def test_spliced_loss_matches_ours(sae_lens, tiny, saved, tmp_path):
    """HookedSAETransformer.run_with_saes with the export == our eval.splice spliced CE on the same tokens."""
    from sae_lens import HookedSAETransformer

    from matryoshka_ext.data import gemma_sites
    from matryoshka_ext.eval.splice import SpliceStats, splice_batch
    from matryoshka_ext.loaders import load_transcoder

    out = export_saelens(saved[1], tmp_path / "sl", layer=1)
    sae = sae_lens.SAE.load_from_disk(str(out))
    hst = HookedSAETransformer(tiny.cfg)
    hst.load_state_dict(tiny.state_dict())
    hst.eval()

    tokens = tiny_tokens(6, 32, seed=7)
    keep = tokens != BOS
    ours = load_transcoder(saved[1])
    stats = SpliceStats()
    splice_batch(tiny, gemma_sites(1), tokens, keep, [("tc", lambda xk: ours.reconstruct(xk))], stats)

    with torch.no_grad():
        logits = hst.run_with_saes(tokens, saes=[sae], exclude_special_tokens=[BOS])
        clean = hst(tokens)
    scored = keep[:, :-1] & keep[:, 1:]
    targets = tokens[:, 1:][scored]

    def ce(lg: torch.Tensor) -> float:
        lp = torch.log_softmax(lg[:, :-1][scored].double(), -1)
        return float(-lp.gather(1, targets[:, None]).mean())

    assert ce(clean) == pytest.approx(stats.mean_ce("clean"), rel=1e-6)
    assert ce(logits) == pytest.approx(stats.mean_ce("tc"), rel=1e-5)
    assert abs(stats.mean_ce("tc") - stats.mean_ce("clean")) > 1e-4  # the splice changes the loss


def test_import_back(saved, transcoders, probe_x, tmp_path):
    out = export_saelens(saved[0], tmp_path / "sl", layer=0)
    tc = load_saelens_transcoder(out)
    assert tc.prefix_ends == [32, 64, 128, 256] and tc.meta["input_hook"] == "blocks.0.ln2.hook_normalized"
    ours = transcoders[0]
    for prefix in (1, 2, 4):
        torch.testing.assert_close(
            tc.decode(tc.encode(probe_x), prefix), ours.decode(ours.encode(probe_x), prefix), rtol=1e-5, atol=1e-5
        )
    back = saelens_to_matryoshka(out)
    assert back.cfg.group_sizes == GROUPS and back.cfg.k == 8
    torch.testing.assert_close(back.reconstruct(probe_x), ours.reconstruct(probe_x), rtol=1e-5, atol=1e-5)
    # and our generic loader reads it too (format detection)
    import matryoshka_ext as mx

    torch.testing.assert_close(
        mx.loaders.load_transcoder(out)(probe_x), ours.reconstruct(probe_x), rtol=1e-5, atol=1e-5
    )


def test_sites_required_and_refusals(transcoders, tmp_path):
    with pytest.raises(ValueError, match="hook sites"):
        export_saelens(transcoders[0], tmp_path / "a")  # an in-memory model records no sites
    export_saelens(
        transcoders[0], tmp_path / "b", input_hook="blocks.0.hook_resid_mid", output_hook="blocks.0.hook_mlp_out"
    )
    with pytest.raises(FileExistsError):
        export_saelens(transcoders[0], tmp_path / "b", layer=0)
    export_saelens(transcoders[0], tmp_path / "b", layer=0, overwrite=True)
    cfg = json.loads((tmp_path / "b" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.0.ln2.hook_normalized"
