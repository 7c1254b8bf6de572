"""run_training's LM paths (live shuffling buffer, disk cache) on a tiny random Gemma-2 from the data package,
including exact resume through the buffer's checkpointed rows."""

from __future__ import annotations

import pytest
import torch

from matryoshka_ext.config import TrainConfig, TranscoderConfig
from matryoshka_ext.training import pipeline
from matryoshka_ext.training.checkpoint import load_checkpoint

from ._configs import synthetic_config

pytest.importorskip("transformer_lens")

CTX, N_CTX = 32, 96


@pytest.fixture
def tiny_lm(monkeypatch):
    """Replace the LM loader with a tiny random Gemma-2 over fixed random token contexts (BOS id 2)."""
    from matryoshka_ext.data.activations import ActivationSource
    from matryoshka_ext.data.models import tiny_model
    from matryoshka_ext.data.sites import sites_for

    model = tiny_model("gemma2", n_layers=2)
    g = torch.Generator().manual_seed(0)
    contexts = torch.randint(3, 500, (N_CTX, CTX), generator=g)
    contexts[:, 0] = 2
    calls = []

    def source(self, split):
        calls.append(split)
        rows = list(contexts if split == "train" else contexts[:8] + 1)
        sites = sites_for(self.cfg.layer, self.cfg.input_hook, self.cfg.output_hook)
        return ActivationSource(model, sites, rows, batch_contexts=4, exclude_token_ids=[2])

    monkeypatch.setattr(pipeline._LazyLM, "source", source)
    return calls


def _cfg(tmp_path, **kw) -> TrainConfig:
    tc = TranscoderConfig(dict_size=128, group_sizes=[32, 32, 64], k=4, aux_k=16, dead_tokens=256)
    base = dict(
        model_name="tiny-test",
        layer=1,
        buffer_tokens=256,
        cache_tokens=0,
        eval_tokens=128,
        cache_dir=str(tmp_path / "cache"),
        cache_dtype="float32",
        ckpt_every=8,
        out_dir=str(tmp_path / "runs"),
    )
    return synthetic_config(tc, batch=64, steps=16, **{**base, **kw})


def _models_equal(a: str, b: str) -> None:
    ma, mb = load_checkpoint(a).model, load_checkpoint(b).model
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


def test_streaming_buffer_exact_resume(tmp_path, tiny_lm):
    full = pipeline.run_training(_cfg(tmp_path, run_name="full"))
    assert full.step == 16 and full.eval is not None and len(full.eval["fvu"]) == 3
    # interrupted after 8 steps (the checkpoint holds the buffer's rows), then resumed
    pipeline.run_training(_cfg(tmp_path, run_name="part"), max_steps=8)
    resumed = pipeline.run_training(_cfg(tmp_path, resume=str(tmp_path / "runs" / "part")))
    assert resumed.step == 16 and resumed.run_dir.endswith("part")
    _models_equal(full.checkpoint, resumed.checkpoint)
    assert "eval" in tiny_lm and "train" in tiny_lm


def test_cached_path_reuses_cache(tmp_path, tiny_lm):
    cfg = _cfg(tmp_path, cache_tokens=1024, run_name="c1")
    a = pipeline.run_training(cfg)
    n_calls = len(tiny_lm)
    b = pipeline.run_training(cfg.replace(run_name="c2"))
    assert len(tiny_lm) == n_calls  # the second run never touched the LM
    _models_equal(a.checkpoint, b.checkpoint)  # same cache, same seed: same run
    assert a.eval["fvu"] == b.eval["fvu"]
