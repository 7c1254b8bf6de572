"""Skip transcoders (``TranscoderConfig.skip_connection``): y_hat_p = decode_p(encode(x)) + x @ W_skip.

The whole objective (every prefix's MSE, FVU and AuxK's residual with the skip term) and its gradients, W_skip's
included, against a plain-PyTorch dense computation; zero init; the skip path learning a dense linear part the
sparse code cannot; the fold into saved weights on raw activations; the adapter and held-out evaluation.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from matryoshka_ext.loaders import load_transcoder
from matryoshka_ext.training.metrics import evaluate
from matryoshka_ext.transcoder import MatryoshkaTranscoder

from ._dense import D_IN, D_OUT, random_data, small_model
from ._dense import dense_objective as _dense_objective


def _model(dtype: str = "float64", selection: str = "batch", **kw) -> MatryoshkaTranscoder:
    return small_model(dtype, selection, **{"skip_connection": True, **kw})


_data = random_data


@pytest.mark.parametrize("selection", ["batch", "row"])
@pytest.mark.parametrize("with_dead", [False, True])
@pytest.mark.parametrize("aux_layout", ["sparse", "dense"])
def test_objective_and_grads_match_dense_reference(seed, selection, with_dead, aux_layout, monkeypatch):
    import matryoshka_ext.ops as mx_ops

    monkeypatch.setattr(mx_ops, "AUX_DENSE_RATIO", 0 if aux_layout == "sparse" else 10**9)
    torch.manual_seed(seed)
    m = _model(selection=selection, prefix_weights=[1.0, 0.5, 2.0, 1.0])
    x, y = _data(seed)
    y = y + x @ torch.randn(D_IN, D_OUT, dtype=torch.float64)  # a linear part for the skip path to matter
    m.initialize_from_batch(x, y)
    with torch.no_grad():  # a skip matrix of the size training reaches, so its terms are far from negligible
        m.W_skip.copy_(torch.randn(D_IN, D_OUT, dtype=torch.float64) * 0.3)
    if with_dead:
        m.tokens_since_fired[::3] = 100
    dead = m.dead_mask()
    out = m(x, y, update_stats=False)
    out.loss.backward()
    loss, mses, fvu, aux, grads, _, r_full = _dense_objective(m, x, y, dead)
    torch.testing.assert_close(out.loss.double(), loss.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.mse.double(), mses.detach(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.fvu.double(), fvu, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.aux_loss.double(), aux.detach(), rtol=1e-6, atol=1e-9)
    assert (out.aux_loss > 0) == with_dead
    assert set(grads) == {"W_enc", "b_enc", "W_dec", "b_dec", "W_skip"}
    for name, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-6, atol=1e-9, msg=name)
    assert float(grads["W_skip"].abs().max()) > 1e-3  # the skip gradient is really exercised
    torch.testing.assert_close(out.recon.double(), r_full / m.y_scale.double(), rtol=1e-6, atol=1e-8)


def test_zero_init_and_off_switch_equivalence(seed):
    """W_skip starts at 0 (so a skip transcoder starts as the plain one); without the switch there is no W_skip,
    the state dict is unchanged, and with W_skip = 0 both compute the same loss and gradients."""
    x, y = _data(seed)
    torch.manual_seed(seed)
    on = _model()
    torch.manual_seed(seed)
    off = _model(skip_connection=False)
    assert off.W_skip is None and "W_skip" not in off.state_dict()
    assert [n for n, _ in on.named_parameters()] == ["W_enc", "b_enc", "W_dec", "b_dec", "W_skip"]
    assert torch.equal(on.W_skip, torch.zeros(D_IN, D_OUT, dtype=torch.float64))
    on.initialize_from_batch(x, y)
    off.initialize_from_batch(x, y)
    assert torch.equal(on.W_skip, torch.zeros_like(on.W_skip))
    a, b = on(x, y, update_stats=False), off(x, y, update_stats=False)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    a.loss.backward()
    b.loss.backward()
    for name, p in off.named_parameters():
        torch.testing.assert_close(getattr(on, name).grad, p.grad, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        assert off.skip(x) is None
        torch.testing.assert_close(on.reconstruct(x), off.reconstruct(x))


def _train(m: MatryoshkaTranscoder, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2) -> None:
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        out = m(x[idx], y[idx])
        opt.zero_grad()
        out.loss.backward()
        m.project_decoder_grad()
        opt.step()
        m.normalize_decoder()


def test_skip_path_learns_a_dense_linear_part():
    """y = x @ M (dense) + a sparse function of x: at k = 2 the plain transcoder cannot represent M, the skip
    path can (and the latents are left with the sparse part)."""
    g = torch.Generator().manual_seed(0)
    n = 2048
    x = torch.randn(n, D_IN, generator=g)
    M = torch.randn(D_IN, D_OUT, generator=g) / D_IN**0.5
    E = torch.randn(D_IN, 32, generator=g) / D_IN**0.5
    y = x @ M + torch.relu(x @ E - 1.5) @ torch.randn(32, D_OUT, generator=g)  # ~7% of the 32 units fire
    fvus = {}
    for skip in (False, True):
        torch.manual_seed(0)
        m = _model(dtype="float32", skip_connection=skip, k=2, aux_k=0)
        m.initialize_from_batch(x[:512], y[:512])
        _train(m, x, y, steps=300)
        with torch.no_grad():
            fvus[skip] = float(m(x, y, update_stats=False).fvu[-1])
    assert fvus[True] < 0.5 * fvus[False], fvus


def test_save_load_folds_skip_with_activation_scaling(tmp_path, seed):
    """Gemma-like raw scales: the saved transcoder gives the trained one's y_hat on raw activations, for every
    prefix and through the loader, and W_skip is stored folded (W_skip * x_scale / y_scale)."""
    torch.manual_seed(seed)
    m = _model()
    x, y = _data(seed)
    x, y = x * 40, (y + x @ torch.randn(D_IN, D_OUT, dtype=torch.float64)) * 3000
    m.initialize_from_batch(x, y)
    _train(m, x.repeat(4, 1), y.repeat(4, 1), steps=20)
    with torch.no_grad():
        m.threshold.fill_(0.02)
    assert float(m.x_scale) != 1 and float(m.y_scale) != 1 and float(m.W_skip.detach().abs().max()) > 0
    m.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sx, sy = m.x_scale.double(), m.y_scale.double()
    torch.testing.assert_close(sd["W_skip"], m.W_skip.detach() * sx / sy, rtol=1e-12, atol=0)
    m2 = MatryoshkaTranscoder.from_pretrained(tmp_path)
    assert m2.cfg.skip_connection and m2.cfg.activation_scaling == "none" and float(m2.y_scale) == 1.0
    tc = load_transcoder(tmp_path)
    with torch.no_grad():
        full = m.reconstruct(x)
        assert float((m.skip(x)).abs().mean()) > 0.1 * float(full.abs().mean())  # the skip term matters here
        for prefix in (1, 2, 3, 4):
            want = m.reconstruct(x, prefix=prefix)
            torch.testing.assert_close(m2.reconstruct(x, prefix=prefix), want, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(tc.reconstruct(x, prefix=prefix), want, rtol=1e-9, atol=1e-9)
            # decode() stays the sparse part alone
            torch.testing.assert_close(m2.decode(m2.encode(x), prefix) + m2.skip(x), want, rtol=1e-9, atol=1e-9)
        per_prefix, _ = tc.reconstruct_prefixes(x)
        torch.testing.assert_close(per_prefix[-1], full, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(tc(x.view(4, -1, D_IN)).reshape(-1, D_OUT), full, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(m2(x, y, update_stats=False).fvu, m(x, y, update_stats=False).fvu)


def test_held_out_evaluate_includes_skip(seed):
    """training.metrics.evaluate: FVU of the JumpReLU path is computed from reconstruct() (skip included)."""
    torch.manual_seed(seed)
    m = _model()
    x, y = _data(seed)
    m.initialize_from_batch(x, y)
    with torch.no_grad():
        m.W_skip.copy_(torch.randn(D_IN, D_OUT, dtype=torch.float64) * 0.3)
        m.threshold.fill_(0.01)
    res = evaluate(m, [(x, y)], torch.device("cpu"))
    with torch.no_grad():
        ys = y * m.y_scale.double()
        var = (ys - ys.mean(0)).pow(2).sum()
        want = [float(((m.reconstruct(x, prefix=p) - y) * m.y_scale.double()).pow(2).sum() / var) for p in (1, 4)]
        fvu_train = m(x, y, update_stats=False).fvu
    assert res["fvu_jumprelu"][0] == pytest.approx(want[0], rel=1e-6)
    assert res["fvu_jumprelu"][-1] == pytest.approx(want[1], rel=1e-6)
    assert res["fvu"] == pytest.approx(fvu_train.tolist(), rel=1e-6)


def test_low_precision_forward_and_to_dtype(seed):
    """bfloat16 parameters: the skip term and its gradient exist and stay close to the float64 computation."""
    torch.manual_seed(seed)
    m = _model(dtype="float64")
    x, y = _data(seed)
    m.initialize_from_batch(x, y)
    with torch.no_grad():
        m.W_skip.copy_(torch.randn(D_IN, D_OUT, dtype=torch.float64) * 0.3)
    ref = m(x, y, update_stats=False)
    ref.loss.backward()
    b = _model(dtype="bfloat16")
    b.load_state_dict({k: v.to(torch.bfloat16) if v.is_floating_point() and v.dim() else v
                       for k, v in m.state_dict().items()})  # fmt: skip
    out = b(x.float(), y.float(), update_stats=False)
    out.loss.backward()
    assert b.W_skip.dtype == torch.bfloat16 and b.W_skip.grad is not None
    assert float(out.loss.detach()) == pytest.approx(float(ref.loss.detach()), rel=0.05)
    cos = torch.nn.functional.cosine_similarity(b.W_skip.grad.double().flatten(), m.W_skip.grad.flatten(), dim=0)
    assert float(cos) > 0.98
