"""load_transcoder on files written for real in each format (small random weights, exact layouts), checked
against independent numpy computations of each format's documented forward pass."""

import json
import os
import time

import numpy as np
import pytest
import torch

import matryoshka_ext as mx
from matryoshka_ext.loaders import FormatError, MatryoshkaAdapter, SparseTranscoder, detect_format, load_transcoder


def _rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _jumprelu_np(x, W_enc, b_enc, thr, W_dec, b_dec, skip=None):
    pre = x.astype(np.float64) @ W_enc + b_enc
    a = pre * (pre > thr)
    y = a @ W_dec + b_dec
    if skip is not None:
        y = y + x @ skip
    return a, y


def _check(tc, x, a_ref, y_ref, tol=1e-4):
    xt = torch.from_numpy(x)
    acts = tc.encode(xt)
    assert isinstance(acts, mx.SparseActs)
    dense = acts.to_dense().double().numpy()
    np.testing.assert_allclose(dense, a_ref, rtol=tol, atol=tol)
    assert (acts.l0().numpy() == (a_ref > 0).sum(1)).all()
    np.testing.assert_allclose(tc(xt).double().numpy(), y_ref, rtol=tol, atol=tol)


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


def test_gemma_scope_npz_jumprelu(tmp_path, rng):
    d_in, F, d_out, N = 12, 40, 10, 64
    W_enc, W_dec = _rand(rng, d_in, F, scale=0.5), _rand(rng, F, d_out)
    b_enc, b_dec = _rand(rng, F, scale=0.3), _rand(rng, d_out)
    thr = np.abs(_rand(rng, F)) * 0.8  # per-latent positive thresholds, as trained JumpReLU thresholds are
    folder = tmp_path / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec, threshold=thr)
    x = _rand(rng, N, d_in, scale=1.5)
    a_ref, y_ref = _jumprelu_np(x, W_enc, b_enc, thr, W_dec, b_dec)
    assert 0 < (a_ref > 0).mean() < 0.9  # the thresholds actually cut
    for path in (folder, folder / "params.npz"):
        assert detect_format(path) == "gemma-scope"
        tc = load_transcoder(path)
        assert isinstance(tc, SparseTranscoder)
        assert (tc.d_in, tc.d_out, tc.num_latents, tc.prefix_ends) == (d_in, d_out, F, None)
        assert tc.meta["layer"] == 12 and tc.meta["format"] == "gemma-scope"
        _check(tc, x, a_ref, y_ref)
        # below-threshold positive pre-activations are dropped, not passed as ReLU would
        pre = x.astype(np.float64) @ W_enc + b_enc
        assert ((pre > 0) & (pre <= thr)).any()
    # lower-case keys (as in some Gemma Scope uploads)
    np.savez(tmp_path / "lc.npz", w_enc=W_enc, w_dec=W_dec, b_enc=b_enc, b_dec=b_dec, threshold=thr)
    _check(load_transcoder(tmp_path / "lc.npz"), x, a_ref, y_ref)


def test_gemma_scope_2_safetensors_with_affine_skip(tmp_path, rng):
    from safetensors.numpy import save_file

    d_in, F, d_out, N = 9, 32, 7, 50  # d_in != d_out pins the skip matrix orientation
    W_enc, W_dec = _rand(rng, d_in, F, scale=0.5), _rand(rng, F, d_out)
    b_enc, b_dec = _rand(rng, F, scale=0.3), _rand(rng, d_out)
    thr, skip = np.abs(_rand(rng, F)) * 0.5, _rand(rng, d_in, d_out, scale=0.2)
    folder = tmp_path / "transcoder" / "layer_6_width_16k_l0_small"
    folder.mkdir(parents=True)
    tensors = dict(w_enc=W_enc, w_dec=W_dec, b_enc=b_enc, b_dec=b_dec, threshold=thr, affine_skip_connection=skip)
    save_file(tensors, str(folder / "params.safetensors"))
    x = _rand(rng, N, d_in)
    a_ref, y_ref = _jumprelu_np(x, W_enc, b_enc, thr, W_dec, b_dec, skip)
    tc = load_transcoder(folder)
    assert tc.meta["format"] == "gemma-scope-2" and tc.meta["layer"] == 6
    _check(tc, x, a_ref, y_ref)
    # decode() is the sparse part only; reconstruct() adds the skip term; [..., d_in] inputs keep their shape
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(tc.decode(tc.encode(xt)).double().numpy(), y_ref - x @ skip, rtol=1e-4, atol=1e-4)
    assert tc(xt.reshape(5, 10, d_in)).shape == (5, 10, d_out)
    # without the skip tensor
    del tensors["affine_skip_connection"]
    save_file(tensors, str(tmp_path / "params.safetensors"))
    _check(load_transcoder(tmp_path / "params.safetensors"), x, a_ref, y_ref - x @ skip)


def _saelens_folder(path, cfg, tensors):
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    with open(path / "cfg.json", "w") as fh:
        json.dump(cfg, fh)
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def test_saelens_jumprelu_sae_subtracts_b_dec(tmp_path, rng):
    d, F, N = 8, 24, 40
    W_enc, W_dec, b_enc, b_dec = _rand(rng, d, F), _rand(rng, F, d), _rand(rng, F, scale=0.2), _rand(rng, d)
    thr = np.abs(_rand(rng, F)) * 0.7
    cfg = {
        "architecture": "jumprelu",
        "d_in": d,
        "d_sae": F,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.3.hook_resid_post", "model_name": "m"},
    }
    p = _saelens_folder(tmp_path / "sae", cfg, dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec, threshold=thr))
    x = _rand(rng, N, d)
    pre = (x.astype(np.float64) - b_dec) @ W_enc + b_enc
    a = np.maximum(pre, 0) * (pre > thr)
    tc = load_transcoder(p)
    assert tc.meta["layer"] == 3 and tc.meta["model_name"] == "m" and tc.meta["format"] == "saelens"
    _check(tc, x, a, a @ W_dec + b_dec)
    _check(load_transcoder(p / "sae_weights.safetensors"), x, a, a @ W_dec + b_dec)  # the weights file works too


@pytest.mark.parametrize("style", ["v6", "pre6"])
def test_saelens_topk(tmp_path, rng, style):
    d, F, N, k = 8, 30, 20, 4
    W_enc, W_dec, b_enc, b_dec = _rand(rng, d, F), _rand(rng, F, d), _rand(rng, F), _rand(rng, d)
    cfg = {"d_in": d, "d_sae": F, "dtype": "float32", "apply_b_dec_to_input": False}
    cfg.update(
        {"architecture": "topk", "k": k}
        if style == "v6"
        else {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k}}
    )
    p = _saelens_folder(tmp_path / style, cfg, dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec))
    x = _rand(rng, N, d)
    pre = x.astype(np.float64) @ W_enc + b_enc
    a = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :k]
    np.put_along_axis(a, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    _check(load_transcoder(p), x, a, a @ W_dec + b_dec)


def test_saelens_relu_transcoder_and_jumprelu_skip_transcoder(tmp_path, rng):
    d_in, F, d_out, N = 10, 20, 6, 30
    W_enc, W_dec, b_enc, b_dec = _rand(rng, d_in, F), _rand(rng, F, d_out), _rand(rng, F), _rand(rng, d_out)
    x = _rand(rng, N, d_in)
    pre = x.astype(np.float64) @ W_enc + b_enc
    base = {
        "d_in": d_in,
        "d_sae": F,
        "d_out": d_out,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "hook_name_out": "blocks.2.hook_mlp_out",
        "metadata": {"hook_name": "blocks.2.ln2.hook_normalized"},
    }
    p = _saelens_folder(
        tmp_path / "tc",
        {**base, "architecture": "transcoder"},
        dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec),
    )
    a = np.maximum(pre, 0)
    tc = load_transcoder(p)  # a transcoder never subtracts its (output-space) b_dec from the input
    assert tc.meta["output_hook"] == "blocks.2.hook_mlp_out" and tc.meta["layer"] == 2
    _check(tc, x, a, a @ W_dec + b_dec)
    thr, W_skip = np.abs(_rand(rng, F)) * 0.5, _rand(rng, d_out, d_in, scale=0.3)  # SAELens: [d_out, d_in]
    p2 = _saelens_folder(
        tmp_path / "skip",
        {**base, "architecture": "jumprelu_skip_transcoder"},
        dict(W_enc=W_enc, W_dec=W_dec, b_enc=b_enc, b_dec=b_dec, threshold=thr, W_skip=W_skip),
    )
    a2 = np.maximum(pre, 0) * (pre > thr)
    _check(load_transcoder(p2), x, a2, a2 @ W_dec + b_dec + x @ W_skip.T)


def test_saelens_rejects_runtime_normalisation(tmp_path, rng):
    d, F = 4, 8
    cfg = {"architecture": "standard", "d_in": d, "d_sae": F, "normalize_activations": "layer_norm"}
    p = _saelens_folder(
        tmp_path / "ln",
        cfg,
        dict(W_enc=_rand(rng, d, F), W_dec=_rand(rng, F, d), b_enc=_rand(rng, F), b_dec=_rand(rng, d)),
    )
    with pytest.raises(FormatError, match="normalize_activations"):
        load_transcoder(p)


def test_ours_save_pretrained_roundtrip(tmp_path, seed):
    from matryoshka_ext.config import TranscoderConfig
    from matryoshka_ext.transcoder import MatryoshkaTranscoder

    gen = torch.Generator().manual_seed(seed)
    cfg = TranscoderConfig(d_in=16, d_out=12, dict_size=48, group_sizes=[8, 16, 24], k=6)
    model = MatryoshkaTranscoder(cfg)
    x, y = torch.randn(256, 16, generator=gen) * 3, torch.randn(256, 12, generator=gen) * 50
    model.initialize_from_batch(x, y)
    model.train()
    model(x, y).loss.backward()  # sets a JumpReLU threshold
    model.eval()
    folder = model.save_pretrained(tmp_path / "tc")
    # fresh inputs: on the training batch one pre-activation equals the threshold exactly (it is the batch's
    # smallest selected activation), and the folded weights may round it to either side
    x = torch.randn(256, 16, generator=gen) * 3
    tc = load_transcoder(folder)
    assert isinstance(load_transcoder(os.path.join(folder, "model.safetensors")), MatryoshkaAdapter)
    assert isinstance(tc, MatryoshkaAdapter) and tc.prefix_ends == [8, 24, 48]
    assert (tc.d_in, tc.d_out, tc.num_latents) == (16, 12, 48)
    with torch.no_grad():
        for p in (1, 2, 3):
            ours, ref = tc.reconstruct(x, prefix=p), model.reconstruct(x, prefix=p)
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-3)
        r, acts = tc.reconstruct_prefixes(x)
        assert r.shape == (3, 256, 12)
        for p in (1, 2, 3):
            torch.testing.assert_close(r[p - 1], tc.decode(acts, p), rtol=1e-5, atol=1e-4)
        # the in-memory model goes through the same adapter
        torch.testing.assert_close(load_transcoder(model)(x), model.reconstruct(x), rtol=1e-5, atol=1e-4)


def test_detection_errors_and_offline_hub(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="not a supported transcoder"):
        load_transcoder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_transcoder(tmp_path / "missing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="unreachable"):
        load_transcoder("hf:google/gemma-scope-2b-pt-transcoders/layer_12/width_16k/average_l0_82")
    assert time.monotonic() - t0 < 10
    assert not os.path.exists(tmp_path / "hf" / "hub" / "models--google--gemma-scope-2b-pt-transcoders" / "blobs")
