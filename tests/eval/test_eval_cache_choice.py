"""eval's choice between the training run's held-out activation cache and the language model
(``commands.run_eval_cache``): the cache is used when it is complete and covers what the flags ask for;
``--no-cache``, other data/sites, more tokens than cached, or a missing/incomplete cache fall back to the LM
with a message on stderr saying why."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from matryoshka_ext.config import TrainConfig
from matryoshka_ext.data.sites import sites_for
from matryoshka_ext.eval.commands import _DATA_ARGS, add_eval_arguments, run_eval_cache
from matryoshka_ext.training.pipeline import cache_key, cache_root_dir
from matryoshka_ext.training.sources import CachedActivations, write_activation_cache

EVAL_TOKENS = 300


def _run(tmp_path) -> TrainConfig:
    return TrainConfig(cache_dir=str(tmp_path / "caches"), eval_tokens=EVAL_TOKENS, layer=3)


def _args(run: TrainConfig, argv: list[str]) -> argparse.Namespace:
    """eval's parsed flags, data flags left unset filled from the run as `_resolve_data_args` does."""
    p = argparse.ArgumentParser()
    add_eval_arguments(p)
    args = p.parse_args(["RUN", *argv])
    for name, (field, _) in _DATA_ARGS.items():
        if getattr(args, name) is None:
            setattr(args, name, getattr(run, field))
    return args


def _write_cache(run: TrainConfig) -> str:
    path = os.path.join(cache_root_dir(run), cache_key(run, run.eval_split, run.eval_tokens))
    g = torch.Generator().manual_seed(0)
    chunks = ((torch.randn(128, 16, generator=g), torch.randn(128, 16, generator=g)) for _ in range(3))
    return write_activation_cache(chunks, EVAL_TOKENS, path, dtype=torch.float32, progress=False)


def test_complete_cache_is_used_when_it_covers_the_request(tmp_path, capsys):
    run = _run(tmp_path)
    sites = sites_for(run.layer)
    assert run_eval_cache(_args(run, []), run, sites) is None  # nothing cached yet
    assert "missing" in capsys.readouterr().err
    path = _write_cache(run)
    assert run_eval_cache(_args(run, []), run, sites) == path
    assert run_eval_cache(_args(run, ["--n-tokens", str(EVAL_TOKENS)]), run, sites) == path
    assert capsys.readouterr().err == ""
    assert CachedActivations(path, batch_size=1, mode="mmap").tokens == EVAL_TOKENS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--no-cache"], "--no-cache"),
        (["--n-tokens", str(EVAL_TOKENS + 1)], "more tokens"),
        (["--split", "train"], "other sites, data"),
        (["--context-size", "64"], "other sites, data"),
        (["--model-dtype", "float16"], "other sites, data"),
        (["--layer", "4"], "other sites, data"),
    ],
)
def test_language_model_path_when_the_cache_does_not_fit(tmp_path, capsys, argv, message):
    run = _run(tmp_path)
    _write_cache(run)
    args = _args(run, argv)
    sites = sites_for(args.layer if args.layer is not None else run.layer)
    assert run_eval_cache(args, run, sites) is None
    assert message in capsys.readouterr().err


def test_incomplete_cache_falls_back_with_a_message(tmp_path, capsys):
    run = _run(tmp_path)
    path = _write_cache(run)
    manifest = [f for f in os.listdir(path) if f.endswith(".json")]
    assert manifest, os.listdir(path)
    for f in manifest:  # what an interrupted writer leaves behind: shards without the manifest
        os.remove(os.path.join(path, f))
    assert run_eval_cache(_args(run, []), run, sites_for(run.layer)) is None
    err = capsys.readouterr().err
    assert "incomplete" in err and path in err


def test_no_run_no_cache_and_no_message(tmp_path, capsys):
    run = _run(tmp_path)
    assert run_eval_cache(_args(run, []), None, sites_for(run.layer)) is None
    assert run_eval_cache(_args(run, []), run.replace(eval_tokens=0), sites_for(run.layer)) is None
    assert capsys.readouterr().err == ""
