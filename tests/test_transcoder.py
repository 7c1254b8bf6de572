"""MatryoshkaTranscoder: loss, AuxK and FVU against an independent dense computation; decoder-norm constraint;
threshold and dead-counter updates; scaling fold; save/load."""

from __future__ import annotations

import json
import os

import pytest
import torch

from matryoshka_ext.config import TranscoderConfig
from matryoshka_ext.sparse import SparseActs
from matryoshka_ext.transcoder import MatryoshkaTranscoder, mean_squared_norm_scale

from .transcoder._dense import D_IN, D_OUT, N
from .transcoder._dense import dense_objective as _dense_loss
from .transcoder._dense import random_data as _data
from .transcoder._dense import small_model as _model


@pytest.mark.parametrize("selection", ["batch", "row"])
@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("aux_layout", ["sparse", "dense"])
def test_loss_auxk_fvu_and_grads_match_dense(seed, selection, with_dead, aux_layout, monkeypatch):
    import matryoshka_ext.ops as mx_ops

    # ratio 0: AuxK always through the sparse ops; a huge ratio: always the dense [N, n_dead] layout
    monkeypatch.setattr(mx_ops, "AUX_DENSE_RATIO", 0 if aux_layout == "sparse" else 10**9)
    torch.manual_seed(seed)
    m = _model(selection=selection, prefix_weights=[1.0, 0.5, 2.0, 1.0])
    x, y = _data(seed)
    m.initialize_from_batch(x, y)
    if with_dead:
        m.tokens_since_fired[::3] = 100  # 22 dead latents > aux_k... and fewer than aux_k in the other case
    dead = m.dead_mask()
    out = m(x, y, update_stats=False)
    out.loss.backward()
    loss, mses, fvu, aux, grads, mask, _ = _dense_loss(m, x, y, dead)
    torch.testing.assert_close(out.loss.double(), loss.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.mse.double(), mses.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.fvu.double(), fvu.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.aux_loss.double(), aux.detach(), rtol=1e-6, atol=1e-9)
    assert (out.aux_loss > 0) == with_dead
    for name, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-6, atol=1e-9, msg=name)
    assert float(out.l0) == pytest.approx(mask.sum().item() / N)
    torch.testing.assert_close(out.acts.to_dense() != 0, mask & (out.acts.to_dense() != 0))
    # reconstruction is returned in raw units
    r_scaled = out.acts.to_dense() @ m.W_dec.detach() + m.b_dec.detach()
    torch.testing.assert_close(out.recon.double(), (r_scaled / m.y_scale.double()).detach(), rtol=1e-5, atol=1e-6)


def test_final_prefix_weight_weighs_the_last_prefix(seed):
    """loss = sum of the prefix MSEs with the last one times final_prefix_weight (no AuxK here)."""
    torch.manual_seed(seed)
    w = 1.5 + torch.rand(()).item()
    m = _model(final_prefix_weight=w, aux_k=0)
    x, y = _data(seed)
    m.initialize_from_batch(x, y)
    out = m(x, y, update_stats=False)
    assert out.mse.shape == (4,) and bool((out.mse > 0).all())
    torch.testing.assert_close(out.loss, out.mse[:-1].sum() + w * out.mse[-1])


def test_fvu_definition_sum_of_per_dim_variances(seed):
    """FVU = sum over dims of squared error / sum over dims of y's variance around its per-dim batch mean."""
    torch.manual_seed(seed)
    m = _model(dtype="float32", activation_scaling="none")
    x, y = _data(seed, torch.float32)
    y[:, 0] = y[:, 0] * 100  # dimensions with very different variances
    with torch.no_grad():
        out = m(x, y, update_stats=False)
        for i in range(m.num_groups):
            r = m.decode(out.acts, prefix=i + 1)
            err = ((r - y) ** 2).sum(0)  # per dim
            var = y.var(0, unbiased=False)  # per dim, around the batch mean
            assert float(out.fvu[i]) == pytest.approx(float(err.sum() / (var.sum() * N)), rel=1e-4)


def test_decode_prefix_uses_only_first_groups(seed):
    torch.manual_seed(seed)
    m = _model(dtype="float32")
    x, y = _data(seed, torch.float32)
    m.initialize_from_batch(x, y)
    acts = m.encode(x, mode="batch")
    dense = acts.to_dense()
    for i, e in enumerate(m.group_ends):
        want = (dense[:, :e] @ m.W_dec[:e] + m.b_dec) / m.y_scale
        torch.testing.assert_close(m.decode(acts, prefix=i + 1), want.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.decode(dense, prefix=i + 1), want.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prefix"):
        m.decode(acts, prefix=0)
    with pytest.raises(ValueError, match="prefix"):
        m.decode(acts, prefix=5)


def test_decoder_norm_constraint_after_steps(seed):
    torch.manual_seed(seed)
    m = _model(dtype="float32")
    x, y = _data(seed, torch.float32)
    m.initialize_from_batch(x, y)
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(64))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(5):
        out = m(x, y)
        out.loss.backward()
        m.project_decoder_grad()
        radial = (m.W_dec.grad * m.W_dec).sum(1)
        assert radial.abs().max() < 1e-6  # the gradient has no component along the (unit) rows
        opt.step()
        opt.zero_grad()
        m.normalize_decoder()
        torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(64), rtol=0, atol=1e-6)


def test_init_transpose_centring_scales_and_b_dec(seed):
    torch.manual_seed(seed)
    m = _model(dtype="float64", d_out=D_IN, init_encoder="transpose", init_encoder_scale=0.5)
    torch.testing.assert_close(m.W_enc, 0.5 * m.W_dec.t())  # before any data
    x, _ = _data(seed)
    y = torch.randn(N, D_IN, dtype=torch.float64) + 3
    m.initialize_from_batch(x, y)
    assert float((x * m.x_scale).pow(2).sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
    assert float((y * m.y_scale).pow(2).sum(1).mean()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(m.b_dec, (y * m.y_scale).mean(0))
    ratio = (m.W_enc / m.W_dec.t()).detach()
    assert float(ratio.min()) > 0 and torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # s * W_dec^T
    xs = x * m.x_scale.double()
    torch.testing.assert_close(m.b_enc, -(xs.mean(0) @ m.W_enc))  # latents read centred inputs
    assert mean_squared_norm_scale(torch.full((4, 4), 0.5)) == pytest.approx(1.0)
    assert mean_squared_norm_scale(torch.full((4, 4), 0.5), target=4) == pytest.approx(2.0)
    m2 = _model(dtype="float64", activation_scaling="unit_rms")
    m2.initialize_from_batch(x, y[:, :D_OUT])
    assert float((x * m2.x_scale).pow(2).mean()) == pytest.approx(1.0, rel=1e-5)


def test_init_linear_reads_linear_prediction_with_fitted_scale(seed):
    torch.manual_seed(seed)
    m = _model(dtype="float64")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N * 4, D_IN, generator=g, dtype=torch.float64)
    y = x @ torch.randn(D_IN, D_OUT, generator=g, dtype=torch.float64) + 0.1 * torch.randn(N * 4, D_OUT, generator=g)
    m.initialize_from_batch(x, y)
    xs, ys = x * m.x_scale.double(), y * m.y_scale.double()
    xc, yc = xs - xs.mean(0), ys - ys.mean(0)
    W_lin = torch.linalg.lstsq(xc, yc).solution  # independent (unregularised) least squares
    E = W_lin @ m.W_dec.t()
    cos = torch.nn.functional.cosine_similarity(m.W_enc.detach(), E.detach(), dim=0)
    assert float(cos.min()) > 0.999  # each latent reads the linear prediction projected on its decoder row
    torch.testing.assert_close(m.b_enc, -(xs.mean(0) @ m.W_enc))

    def loss_at(factor: float) -> float:  # the fitted scale minimises the nested loss on the init batch
        with torch.no_grad():
            m.W_enc.mul_(factor)
            m.b_enc.mul_(factor)
            out = float(m(x, y, update_stats=False).loss)
            m.W_enc.div_(factor)
            m.b_enc.div_(factor)
        return out

    best = loss_at(1.0)
    assert best < loss_at(1.1) and best < loss_at(0.9)
    assert float(m(x, y, update_stats=False).fvu[-1]) < 1.0  # the initial reconstruction already helps


def test_threshold_and_dead_counter_updates(seed):
    torch.manual_seed(seed)
    m = _model(dtype="float32", threshold_momentum=0.9, dead_tokens=10_000)
    x, y = _data(seed, torch.float32)
    m.initialize_from_batch(x, y)
    assert int(m.threshold_updates) == 0
    # metric passes change nothing
    with torch.no_grad():
        m(x, y)
    m.eval()
    m(x, y)
    m.train()
    assert int(m.threshold_updates) == 0 and int(m.tokens_since_fired.sum()) == 0
    out1 = m(x, y)  # training mode + grad: updates
    v = out1.acts.values
    first = float(v[v > 0].min())
    assert float(m.threshold) == pytest.approx(first)
    fired = torch.zeros(64, dtype=torch.bool)
    fired[out1.acts.indices[v > 0]] = True
    assert (m.tokens_since_fired[fired] == 0).all() and (m.tokens_since_fired[~fired] == N).all()
    with torch.no_grad():
        m.b_enc -= 0.01  # change the activations so the batch minimum moves
    out2 = m(x, y)
    v2 = out2.acts.values
    assert float(m.threshold) == pytest.approx(0.9 * first + 0.1 * float(v2[v2 > 0].min()), rel=1e-6)
    assert int(m.threshold_updates) == 2
    # explicit control
    before = m.tokens_since_fired.clone()
    m(x, y, update_stats=False)
    assert torch.equal(before, m.tokens_since_fired)
    # buffers persist
    sd = m.state_dict()
    assert {"threshold", "threshold_updates", "tokens_since_fired", "x_scale", "y_scale"} <= set(sd)


def test_jumprelu_encode_uses_threshold(seed):
    torch.manual_seed(seed)
    m = _model(dtype="float32")
    x, y = _data(seed, torch.float32)
    m.initialize_from_batch(x, y)
    with torch.no_grad():
        m.threshold.fill_(0.05)
        pre = m.pre_activations(x)
        dense = m.encode(x).to_dense()
    torch.testing.assert_close(dense, torch.where(pre > 0.05, pre, torch.zeros_like(pre)))
    with pytest.raises(ValueError, match="mode"):
        m.encode(x, mode="dense")


def test_to_dtype_keeps_fp32_buffers():
    m = _model(dtype="float32")
    m.threshold.fill_(1.0 + 2**-20)  # not representable in bf16
    m.to(torch.bfloat16)
    assert m.W_enc.dtype == torch.bfloat16
    assert m.threshold.dtype == torch.float32 and float(m.threshold) == 1.0 + 2**-20
    assert m.x_scale.dtype == torch.float32


def test_save_pretrained_folds_scales(tmp_path, seed):
    torch.manual_seed(seed)
    m = _model(dtype="float64")  # float64 so the fold's rounding stays far below the tolerance
    x, y = _data(seed, torch.float64)
    m.initialize_from_batch(x * 40, y * 3000)  # Gemma-like raw scales
    for _ in range(3):
        m(x * 40, y * 3000).loss.backward()
    with torch.no_grad():
        m.threshold.fill_(0.02)
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    with open(tmp_path / "model.safetensors", "rb") as fh:  # safetensors: 8-byte header length + JSON
        header_len = int.from_bytes(fh.read(8), "little")
        assert json.loads(fh.read(header_len))["__metadata__"]["format"] == "matryoshka-ext-transcoder"
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["activation_scaling"] == "none" and cfg["group_sizes"] == [8, 8, 16, 32]
    m2 = MatryoshkaTranscoder.from_pretrained(tmp_path)
    assert float(m2.x_scale) == 1.0 and float(m2.y_scale) == 1.0
    torch.testing.assert_close(m2.W_dec.norm(dim=1), torch.ones(64, dtype=torch.float64))  # unit rows
    with torch.no_grad():
        for prefix in (1, 4):
            a = m.reconstruct(x * 40, prefix=prefix)
            b = m2.reconstruct(x * 40, prefix=prefix)
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
        # training-selection forward agrees too (FVU is scale-free)
        torch.testing.assert_close(
            m2(x * 40, y * 3000, update_stats=False).fvu, m(x * 40, y * 3000, update_stats=False).fvu
        )
    assert torch.equal(m2.tokens_since_fired, m.tokens_since_fired)


def test_input_validation():
    m = _model(dtype="float32")
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(4, D_IN + 1), torch.randn(4, D_OUT))
    with pytest.raises(ValueError, match="y must be"):
        m(torch.randn(4, D_IN), torch.randn(5, D_OUT))
    with pytest.raises(ValueError, match="d_in"):
        MatryoshkaTranscoder(TranscoderConfig())


def test_sparse_acts_accepted_from_other_sources():
    m = _model(dtype="float32")
    acts = SparseActs.from_dense(torch.zeros(3, 64))
    torch.testing.assert_close(m.decode(acts), (m.b_dec / m.y_scale).expand(3, -1).detach())
