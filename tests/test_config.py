"""TranscoderConfig / TrainConfig: validation messages, JSON/YAML/CLI round trips, recipe files."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from matryoshka_ext.config import (
    ConfigError,
    TrainConfig,
    TranscoderConfig,
    add_config_arguments,
    config_from_sources,
    overrides_from_args,
)

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _parse(argv: list[str]) -> dict:
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return overrides_from_args(p.parse_args(argv))


def test_defaults_valid_and_round_trip(tmp_path):
    cfg = TrainConfig()
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == cfg
    assert cfg.transcoder.group_ends[-1] == cfg.transcoder.dict_size


def test_group_sizes_must_sum_to_dict_size():
    with pytest.raises(ConfigError, match="group_sizes must sum to dict_size=100"):
        TranscoderConfig(dict_size=100, group_sizes=[50, 40])
    # a cumulative list is rejected with a hint, and accepted only through the explicit option
    with pytest.raises(ConfigError, match="cumulative"):
        TranscoderConfig(dict_size=64, group_sizes=[8, 16, 32, 64])
    tc = TranscoderConfig(dict_size=64, group_sizes=[8, 16, 32, 64], group_sizes_cumulative=True)
    assert tc.group_sizes == [8, 8, 16, 32] and tc.group_ends == [8, 16, 32, 64]
    assert not tc.group_sizes_cumulative  # stored as sizes, so it round-trips
    assert TranscoderConfig.from_dict(tc.to_dict()) == tc
    with pytest.raises(ConfigError, match="group_sizes"):
        TranscoderConfig(dict_size=64, group_sizes=[32, 16], group_sizes_cumulative=True)
    with pytest.raises(ConfigError, match="group_sizes"):
        TranscoderConfig(dict_size=64, group_sizes=[64, 0])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(k=0), "k"),
        (dict(k=5000), "k"),
        (dict(selection="dense"), "selection"),
        (dict(prefix_weights=[1.0, 2.0]), "prefix_weights"),
        (dict(prefix_weights=[1, 1, 1, 1, -1]), "prefix_weights"),
        (dict(final_prefix_weight=0.0), "final_prefix_weight"),
        (dict(final_prefix_weight=float("nan")), "final_prefix_weight"),
        (dict(final_prefix_weight=True), "final_prefix_weight"),
        (dict(aux_k=-1), "aux_k"),
        (dict(aux_penalty=-0.1), "aux_penalty"),
        (dict(dead_tokens=0), "dead_tokens"),
        (dict(dtype="int8"), "dtype"),
        (dict(activation_scaling="layernorm"), "activation_scaling"),
        (dict(threshold_momentum=1.0), "threshold_momentum"),
        (dict(d_in=0), "d_in"),
    ],
)
def test_transcoder_validation_names_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TranscoderConfig(**kwargs)


def test_prefix_weights_final_weight_and_explicit_list():
    w = 1.0 + torch.rand(()).item()  # any weight above 1
    assert TranscoderConfig(final_prefix_weight=w).weights == [1.0, 1.0, 1.0, 1.0, w]
    assert TranscoderConfig(dict_size=64, group_sizes=[64], final_prefix_weight=w).weights == [1.0]  # one group
    explicit = TranscoderConfig(prefix_weights=[0, 0, 0, 0, 1], final_prefix_weight=w)
    assert explicit.weights == [0.0, 0.0, 0.0, 0.0, 1.0]  # an explicit list wins
    assert TranscoderConfig().weights == [1.0] * 5  # the library default: the plain sum over prefixes


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(lr=0.0), "lr"),
        (dict(min_lr=1.0), "min_lr"),
        (dict(batch_tokens=0), "batch_tokens"),
        (dict(total_tokens=10, batch_tokens=64), "total_tokens"),
        (dict(wandb_mode="sometimes"), "wandb_mode"),
        (dict(keep_last=0), "keep_last"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(ema_decay=-0.5), "ema_decay"),
        (dict(cache_dtype="int4"), "cache_dtype"),
        (dict(cache_mode="ram"), "cache_mode"),
    ],
)
def test_train_validation_names_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kwargs)


def test_unknown_field_rejected():
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="topk"):
        TrainConfig.from_dict({"transcoder": {"topk": 3}})


def test_cli_flags_nested_flat_dashes():
    o = _parse(
        [
            "--transcoder.k", "16",
            "--aux-penalty", "1/64",
            "--wandb-mode", "disabled",
            "--group-sizes", "2048,2048",
            "--total-tokens", "2e6",
            "--lr", "1e-3",
            "--run_name", "none",
            "--streaming", "yes",
            "--transcoder.prefix-weights", "[1, 0.5]",
        ]
    )  # fmt: skip
    assert o == {
        "transcoder": {
            "k": 16,
            "aux_penalty": 1 / 64,
            "group_sizes": [2048, 2048],
            "prefix_weights": [1.0, 0.5],
        },
        "wandb_mode": "disabled",
        "total_tokens": 2_000_000,
        "lr": 1e-3,
        "run_name": None,
        "streaming": True,
    }
    cfg = config_from_sources(TrainConfig, None, o)
    assert cfg.transcoder.k == 16 and cfg.transcoder.group_sizes == [2048, 2048]


def test_cli_bad_value_names_field():
    with pytest.raises(ConfigError, match="transcoder.k"):
        _parse(["--k", "sixteen"])
    with pytest.raises(ConfigError, match="total_tokens"):
        _parse(["--total-tokens", "1.5"])


def test_every_field_has_a_flag():
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    dests = {a.dest for a in p._actions}
    for name in TrainConfig().to_dict():
        if name != "transcoder":
            assert f"cfg:{name}" in dests
    for name in TranscoderConfig().to_dict():
        assert f"cfg:transcoder.{name}" in dests


def test_file_then_flags_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.01\ntranscoder:\n  dict_size: 128\n  group_sizes: [64, 64]\n  k: 8\n  aux_k: 32\n")
    cfg = config_from_sources(TrainConfig, str(path), _parse(["--k", "4"]))
    assert cfg.lr == 0.01 and cfg.transcoder.dict_size == 128 and cfg.transcoder.k == 4
    assert cfg.batch_tokens == TrainConfig().batch_tokens  # untouched fields keep defaults


@pytest.mark.parametrize("layer", [8, 12, 17])
def test_gemma2_recipes(layer):
    cfg = TrainConfig.load(os.path.join(CONFIGS, f"gemma-2-2b-layer{layer}.yaml"))
    tc = cfg.transcoder
    assert cfg.layer == layer and "gemma-2-2b" in cfg.model_name
    assert tc.dict_size == 18432 and tc.group_sizes == [2304, 2304, 4608, 4608, 4608]
    assert tc.k == 96 and tc.aux_k == 256 and tc.aux_penalty == pytest.approx(1 / 64)
    assert tc.d_in == tc.d_out == 2304
    assert cfg.dataset == "HuggingFaceFW/fineweb-edu" and cfg.streaming and cfg.autocast_bf16
    assert cfg.warmup_steps > 0 and 0 < cfg.min_lr < cfg.lr


def test_offline_recipe_is_the_default():
    assert TrainConfig.load(os.path.join(CONFIGS, "offline-default.yaml")) == TrainConfig()
