"""Several layers from one pass of the model (`train-multi`): each layer's transcoder is exactly the one a
single-layer run trains on the same data, the LM runs once for all layers, and multi-layer runs resume;
on 2 gloo ranks the layers train data-parallel or spread over ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from matryoshka_ext import cli
from matryoshka_ext.config import TrainConfig, TranscoderConfig
from matryoshka_ext.training import pipeline
from matryoshka_ext.training.checkpoint import checkpoint_dirs, load_checkpoint
from matryoshka_ext.training.distributed import exit_rank
from matryoshka_ext.training.multi import layer_dir, read_multi_layers, run_multi_training
from matryoshka_ext.training.sources import SyntheticActivations
from matryoshka_ext.training.trainer import Trainer

from ._configs import synthetic_config

B = 64


def _cfg(tmp_path, **kw) -> TrainConfig:
    tc = TranscoderConfig(dict_size=64, group_sizes=[16, 16, 32], k=4, aux_k=8, dead_tokens=256)
    kw = {"eval_tokens": 128, "out_dir": os.path.join(str(tmp_path), "runs"), **kw}
    return synthetic_config(tc, batch=B, **kw)


def _same_models(a: str, b: str) -> None:
    ma, mb = load_checkpoint(a).model, load_checkpoint(b).model
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


def _single_synthetic(tmp_path, layer: int, name: str) -> str:
    data = SyntheticActivations(d_in=32, d_out=24, batch_size=B, dict_seed=layer)
    return Trainer(_cfg(tmp_path), data, str(tmp_path / name)).run().checkpoint


def test_synthetic_layers_equal_single_layer_runs_and_resume(tmp_path, capsys):
    cfg = _cfg(tmp_path, run_name="multi")
    res = run_multi_training(cfg, "5,3")
    run = str(tmp_path / "runs" / "multi")
    assert sorted(res) == [3, 5] and read_multi_layers(run) == [3, 5]
    for layer in (3, 5):
        assert [s for s, _ in checkpoint_dirs(layer_dir(run, layer))] == [6, 12]
        assert res[layer].eval is not None and res[layer].step == 12
        _same_models(res[layer].checkpoint, _single_synthetic(tmp_path, layer, f"single{layer}"))
    # interrupted after 6 steps, resumed through the CLI: same models as straight through
    run_multi_training(cfg.replace(run_name="part"), [3, 5], max_steps=6)
    part = str(tmp_path / "runs" / "part")
    assert cli.main(["train-multi", "--resume", part, "--progress", "false"]) == 0
    assert "== layer 3" in capsys.readouterr().out
    for layer in (3, 5):
        _same_models(load_checkpoint(layer_dir(part, layer)).path, res[layer].checkpoint)


def test_train_multi_cli_needs_layers(capsys):
    assert cli.main(["train-multi", "--model-name", "synthetic"]) == 2
    assert "--layers is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# the LM paths, on a tiny random Gemma-2


@pytest.fixture
def tiny_lm(monkeypatch):
    """Both LM sources over a tiny random 3-layer Gemma-2 and fixed token contexts; counts LM forwards."""
    pytest.importorskip("transformer_lens")
    from matryoshka_ext.data.activations import ActivationSource
    from matryoshka_ext.data.models import tiny_model
    from matryoshka_ext.data.sites import sites_for

    model = tiny_model("gemma2", n_layers=3)
    g = torch.Generator().manual_seed(0)
    contexts = torch.randint(3, 500, (96, 32), generator=g)
    contexts[:, 0] = 2
    forwards = {"train": 0, "eval": 0}

    def make(self, split, sites, shard=(0, 1)):
        rows = list(contexts if split == "train" else contexts[:8] + 1)[shard[0] :: shard[1]]

        class Counting(ActivationSource):
            def _compute(self, tokens, first):
                forwards[split] += 1
                return super()._compute(tokens, first)

        return Counting(model, sites, rows, batch_contexts=4, exclude_token_ids=[2])

    def single(self, split):
        return make(self, split, sites_for(self.cfg.layer, self.cfg.input_hook, self.cfg.output_hook))

    def multi(self, split, layers, shard=(0, 1)):
        return make(self, split, [sites_for(layer, self.cfg.input_hook, self.cfg.output_hook) for layer in layers])

    monkeypatch.setattr(pipeline._LazyLM, "source", single)
    monkeypatch.setattr(pipeline._LazyLM, "multi_source", multi)
    # what the samples hook reads: the model itself and held-out contexts
    monkeypatch.setattr(pipeline._LazyLM, "get", lambda self: model)
    monkeypatch.setattr(pipeline._LazyLM, "contexts", lambda self, split, shard=(0, 1): contexts[:8] + 1)
    return forwards


def _lm_cfg(tmp_path, **kw) -> TrainConfig:
    return _cfg(
        tmp_path,
        model_name="tiny-test",
        buffer_tokens=256,
        total_tokens=B * 8,
        ckpt_every=4,
        cache_dir=str(tmp_path / "cache"),
        cache_dtype="float32",
        **kw,
    )


@pytest.mark.parametrize("cache_tokens", [0, 1024])
def test_lm_layers_from_one_pass_equal_single_layer_runs(tmp_path, tiny_lm, cache_tokens):
    cfg = _lm_cfg(tmp_path, cache_tokens=cache_tokens)
    multi = run_multi_training(cfg.replace(run_name="m"), [1, 2])
    n_multi = dict(tiny_lm)
    assert n_multi["train"] > 0 and n_multi["eval"] > 0
    for layer in (1, 2):
        before = tiny_lm["train"]
        single = pipeline.run_training(cfg.replace(layer=layer, run_name=f"s{layer}"))
        _same_models(multi[layer].checkpoint, single.checkpoint)
        assert multi[layer].eval["fvu"] == single.eval["fvu"]
        if cache_tokens:  # one pass wrote both layers' caches; the single-layer run reused them
            assert tiny_lm["train"] == before
        else:  # one layer alone needs as many LM forwards as the multi-layer run made for both
            assert tiny_lm["train"] - before == n_multi["train"]
    assert tiny_lm["eval"] == n_multi["eval"]  # both layers' eval caches came from one pass


def test_samples_during_multi_layer_training(tmp_path, tiny_lm, monkeypatch):
    """`samples_every` in train-multi: every layer gets its own samples at its own sites, at the due steps."""
    from matryoshka_ext.eval import evaluate
    from matryoshka_ext.eval.samples import SampleSet

    monkeypatch.setattr(evaluate, "default_exclude_ids", lambda model: [2])  # the tiny model has no tokenizer

    cfg = _lm_cfg(tmp_path, cache_tokens=1024, samples_every=4, samples_contexts=4, samples_top_n=3)
    run_multi_training(cfg.replace(run_name="m"), [1, 2])
    run = os.path.join(str(tmp_path), "runs", "m")
    for layer in (1, 2):
        folder = os.path.join(layer_dir(run, layer), "samples")
        assert sorted(os.listdir(folder)) == ["step_000000004", "step_000000008"]
        s = SampleSet.load(os.path.join(folder, "step_000000008"))
        assert s.meta["step"] == 8 and s.meta["sites"]["layer"] == layer and s.n_tokens > 0


# ----------------------------------------------------------------------------------------------------------
# 2 ranks


def _worker(rank: int, world: int, init_file: str, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = _cfg(tmp, total_tokens=B * 6, ckpt_every=3)
        spread = run_multi_training(cfg.replace(run_name="spread"), [3, 5, 7], spread=True)
        ddp = run_multi_training(cfg.replace(run_name="ddp"), [3, 5])
        torch.save({"spread": sorted(spread), "ddp": sorted(ddp)}, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    exit_rank()  # success: leave before finalization can race gloo's last work object (see end_launched_rank)


def test_two_ranks_spread_and_data_parallel_layers(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert got[0]["spread"] == [3, 7] and got[1]["spread"] == [5]  # layer i on rank i % 2
    assert got[0]["ddp"] == got[1]["ddp"] == [3, 5]
    runs = tmp_path / "runs"
    cfg = _cfg(tmp_path, total_tokens=B * 6, ckpt_every=3)
    for layer in (3, 5, 7):  # spread: each layer alone on the whole stream == a one-process run
        data = SyntheticActivations(d_in=32, d_out=24, batch_size=B, dict_seed=layer)
        single = Trainer(cfg, data, str(tmp_path / f"one{layer}")).run().checkpoint
        _same_models(load_checkpoint(layer_dir(str(runs / "spread"), layer)).path, single)
    for layer in (3, 5):
        assert [s for s, _ in checkpoint_dirs(layer_dir(str(runs / "ddp"), layer))] == [3, 6]
