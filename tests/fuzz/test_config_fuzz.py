"""Hypothesis over the config loaders and the `train` command line.

Valid random configs survive every loader unchanged (dict, JSON, YAML, .json/.yaml/.yml files, a config file
under the defaults, command-line flags). Invalid ones -- a field of the wrong type, non-finite or out of range, an
unknown key, an unknown flag, a flag without its value or with unparsable text -- raise ConfigError (a ValueError)
naming the field, or make `matryoshka-ext train` exit non-zero naming the field or flag. Never a traceback, never
silent acceptance. A batch of the same cases also runs in a child process (as the op cases do).
"""

from __future__ import annotations

import json
import math
import os
import random

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matryoshka_ext.config import TrainConfig, _strip_optional

from .budget import examples
from .cases import judge, run_spec
from .config_cases import (
    ENUMS,
    FIELDS,
    LOADERS,
    NON_NEGATIVE,
    POSITIVE,
    cli_train,
    gen_any_config_case,
    gen_cli_invalid,
    gen_config_invalid,
    load,
)
from .runner import child_failure, run_child

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Free-text fields: any non-empty text except what the command line reads as None for optional fields.
TEXT = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABC0123456789_-./:"), min_size=1, max_size=12).filter(
    lambda s: s.lower() not in ("none", "null", "~") and s != "--"  # argparse drops a "--" value: see config_cases
)
FLOAT_RANGES = {
    "lr": (1e-7, 1.0), "adam_beta1": (0.0, 0.999), "adam_beta2": (0.0, 0.999), "grad_clip": (0.0, 10.0),
    "transcoder.aux_penalty": (0.0, 1.0), "transcoder.threshold_momentum": (0.0, 0.99),
    "transcoder.init_encoder_scale": (1e-3, 10.0),
}


@st.composite
def valid_configs(draw) -> dict:
    """A random valid TrainConfig as a nested dict of only the fields drawn (the rest stay default)."""
    flat: dict[str, object] = {}
    for path, tp in FIELDS:
        if path == "resume" or draw(st.integers(0, 2)) == 0:  # resume would load a checkpoint in the CLI path
            continue
        inner, optional = _strip_optional(tp)
        if optional and draw(st.integers(0, 4)) == 0:
            flat[path] = None
        elif path in ENUMS:
            flat[path] = draw(st.sampled_from(ENUMS[path]))
        elif inner is bool:
            flat[path] = draw(st.booleans())
        elif inner is int and path in POSITIVE:
            flat[path] = draw(st.integers(1, 10**6))
        elif inner is int and path in NON_NEGATIVE:
            flat[path] = draw(st.integers(0, 10**6))
        elif inner is float and path in FLOAT_RANGES:
            flat[path] = draw(st.floats(*FLOAT_RANGES[path]))
        elif inner is str:
            flat[path] = draw(TEXT)
    # Fields with constraints between them, drawn together.
    F = draw(st.integers(1, 10_000))
    sizes = draw(st.lists(st.integers(1, 64), min_size=1, max_size=6))
    sizes[-1] += max(0, F - sum(sizes))
    F = sum(sizes)
    flat["transcoder.dict_size"], flat["transcoder.group_sizes"] = F, sizes
    if draw(st.booleans()):  # the legacy spelling: cumulative ends
        ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        flat["transcoder.group_sizes"], flat["transcoder.group_sizes_cumulative"] = ends, True
    else:
        flat["transcoder.group_sizes_cumulative"] = False
    flat["transcoder.k"] = draw(st.integers(1, F))
    if draw(st.booleans()):
        w = draw(st.lists(st.floats(0.0, 4.0), min_size=len(sizes), max_size=len(sizes)))
        flat["transcoder.prefix_weights"] = w if any(x > 0 for x in w) else [1.0] * len(sizes)
    lr = flat.get("lr", TrainConfig().lr)
    flat["min_lr"] = draw(st.floats(0.0, lr))
    batch = flat.setdefault("batch_tokens", TrainConfig().batch_tokens)
    flat["total_tokens"] = max(flat.get("total_tokens", batch), batch)
    nested: dict = {}
    for path, v in flat.items():
        head, _, leaf = path.rpartition(".")
        (nested.setdefault(head, {}) if head else nested)[leaf] = v
    return nested


def _flags(nested: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in nested.items():
        if isinstance(v, dict):
            out += _flags(v, prefix + k + ".")
            continue
        if v is None:
            text = "none"
        elif isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, list):
            text = ",".join(repr(x) for x in v)
        else:
            text = repr(v) if isinstance(v, float) else str(v)
        out.append(f"--{prefix}{k}={text}")  # --flag=value: values starting with '-' stay values
    return out


@settings(max_examples=examples(100), **SETTINGS)
@given(valid_configs(), st.sampled_from(LOADERS))
def test_valid_configs_survive_every_loader(nested, loader):
    cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **nested,
                                 "transcoder": {**TrainConfig().transcoder.to_dict(), **nested.get("transcoder", {})}})
    assert load(loader, nested) == cfg
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
    printed = cli_train(["train", "--print-config", *_flags(nested)])
    assert TrainConfig.from_dict(yaml.safe_load(printed)) == cfg


def _check(spec: dict) -> None:
    problem = judge(spec, run_spec(spec))
    assert problem is None, f"{spec['why']}: {problem}\nspec: {json.dumps(spec)}"


@settings(max_examples=examples(250), **SETTINGS)
@given(st.randoms(use_true_random=False))
def test_invalid_config_raises_naming_the_field(rng):
    _check(gen_config_invalid(rng))


@settings(max_examples=examples(150), **SETTINGS)
@given(st.randoms(use_true_random=False))
def test_invalid_command_line_exits_naming_the_flag(rng):
    _check(gen_cli_invalid(rng))


def test_config_cases_in_a_subprocess(tmp_path):
    seed = int(os.environ.get("MX_TEST_SEED", random.SystemRandom().randrange(2**31)))
    rng = random.Random(seed)
    specs = [gen_any_config_case(rng) for _ in range(examples(200))]
    problem = child_failure(specs, *run_child(specs, seed, tmp_path))
    assert problem is None, f"(replay with MX_TEST_SEED={seed}) {problem}"


def test_non_finite_numbers_are_refused_everywhere():
    """NaN/Inf in any float field: refused by name (no run may start with lr = inf or a NaN weight)."""
    for path, tp in FIELDS:
        inner, _ = _strip_optional(tp)
        if inner is not float:
            continue
        for bad in (math.nan, math.inf, -math.inf):
            spec = {"op": "config.load", "args": ["dict", _nest(path, bad)],
                    "expect": ["raises", "ValueError", path.rsplit(".", 1)[-1]], "why": f"nonfinite/{path}"}
            _check(spec)


def _nest(path: str, value: object) -> dict:
    head, _, rest = path.partition(".")
    return {head: _nest(rest, value) if rest else value}
