"""Config / CLI fuzz cases in the same JSON spec form as cases.py (so the child process can replay them).

Invalid cases change one field of an otherwise valid TrainConfig (top level or `transcoder.*`) to a value of the
wrong type, a non-finite or out-of-range number, or add an unknown key, then load it through one of the loaders
(from_dict, from_json, from_yaml, load from .json/.yaml/.yml, config_from_sources, `matryoshka-ext train` flags).
Expected: ValueError (ConfigError) naming the field, or for the command line a non-zero exit naming the
field or flag. Fields are read from the dataclasses, so a field added later is fuzzed for its type at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import re
import tempfile
import typing
from typing import Any

from matryoshka_ext import cli
from matryoshka_ext.config import (
    TrainConfig,
    _flag_fields,
    _strip_optional,
    config_from_sources,
)

FIELDS: list[tuple[str, Any]] = [(p, t) for p, t, _ in _flag_fields(TrainConfig)]
ENUMS = {
    "model_dtype": ("float32", "bfloat16", "float16", "float64"),
    "cache_dtype": ("float32", "bfloat16", "float16", "float64"),
    "cache_mode": ("auto", "memory", "mmap"),
    "wandb_mode": ("online", "offline", "disabled"),
    "transcoder.selection": ("batch", "row"),
    "transcoder.dtype": ("float32", "bfloat16", "float16", "float64"),
    "transcoder.activation_scaling": ("unit_mean_squared_norm", "unit_rms", "none"),
    "transcoder.init_encoder": ("linear", "transpose"),
    "transcoder.decoder_norm": ("unit", "free"),
}
POSITIVE = {"context_size", "lm_batch_contexts", "buffer_tokens", "batch_tokens", "total_tokens", "log_every",
            "keep_last", "max_nonfinite_in_a_row", "transcoder.dict_size", "transcoder.dead_tokens",
            "transcoder.d_in", "transcoder.d_out"}
NON_NEGATIVE = {"layer", "warmup_steps", "ckpt_every", "cache_tokens", "eval_tokens", "seed", "transcoder.aux_k"}


class CLIExit(Exception):
    """`matryoshka-ext` exited non-zero; the message holds the exit code and what it wrote to stderr."""


def _range_invalid(rng: random.Random, path: str) -> list[Any]:
    """Well-typed values outside the field's valid range (empty when the field has no range)."""
    if path in POSITIVE:
        return [0, -1, -rng.randint(2, 10**9)]
    if path in NON_NEGATIVE:
        return [-1, -rng.randint(2, 10**9)]
    if path in ENUMS:
        return [rng.choice(["", "FLOAT32", "int8", "dense", "topk", "zzz", ENUMS[path][0] + " "])]
    return {
        "lr": [0.0, -1e-3, -rng.random()],
        "min_lr": [-1e-6, 1.0, 10.0],  # the default lr is 1e-3
        "adam_beta1": [1.0, -0.1, 1.5],
        "adam_beta2": [1.0, -0.5],
        "grad_clip": [-1.0, -rng.random() - 1e-9],
        "transcoder.k": [0, -3, 10**6],  # above dict_size
        "transcoder.aux_penalty": [-0.1],
        "transcoder.threshold_momentum": [1.0, -0.01, 2.0],
        "transcoder.init_encoder_scale": [0.0, -1.0],
        "transcoder.group_sizes": [[1, 2, 3], [], [0, 4096], [-1, 4097], [4096, 0]],
        "transcoder.prefix_weights": [[1.0], [1.0] * 9, [-1.0, 1, 1, 1, 1], [0.0] * 5],
        "transcoder.final_prefix_weight": [0.0, -1.0, -rng.random(), math.inf],
    }.get(path, [])


def _type_invalid(rng: random.Random, tp: Any) -> list[Any]:
    """Values of the wrong type for the field type `tp` (None only where the field does not allow it)."""
    inner, optional = _strip_optional(tp)
    out: list[Any] = [] if optional else [None]
    if inner is int:
        out += ["12", 1.5, 3.0, True, [1], {"a": 1}, 2**64, -(2**70), math.nan]
    elif inner is float:
        out += ["0.1", True, [0.1], {"v": 1}, math.inf, -math.inf, math.nan]
    elif inner is bool:
        out += ["yes", "true", 1, 0, 0.0, [True]]
    elif inner is str:
        out += [1, 1.5, True, ["a"], {"k": "v"}]
    elif typing.get_origin(inner) is list:
        (elem,) = typing.get_args(inner)
        out += ["1,2", 5, {"a": 1}]
        out += [["a", "b"], [True, 1]] if elem is int else [["x"], [math.nan], [math.inf, 1.0]]
        if elem is int:
            out.append([1.5, 2])
    return out


def _nest(path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _field_regex(path: str) -> str:
    leaf = path.rsplit(".", 1)[-1]
    return rf"(?<![\w]){re.escape(leaf)}(?![\w])"


LOADERS = ["dict", "json", "yaml", "file.json", "file.yaml", "file.yml", "sources"]


def gen_config_invalid(rng: random.Random) -> dict:
    """One invalid config through one loader."""
    loader = rng.choice(LOADERS)
    if rng.random() < 0.1:
        where = rng.choice(["", "transcoder."])
        key = rng.choice(["lr_", "K", "learning_rate", "dict-size", "group_ends", "zz_" + str(rng.randint(0, 99))])
        return {"op": "config.load", "args": [loader, _nest(where + key, 1)],
                "expect": ["raises", "ValueError", rf"unknown field.*{re.escape(key)}"], "why": f"config/unknown/{key}"}
    path, tp = rng.choice(FIELDS)
    choices = _type_invalid(rng, tp) + _range_invalid(rng, path)
    value = rng.choice(choices)
    if loader == "json" and isinstance(value, float) and not math.isfinite(value):
        loader = "dict"  # strict JSON has no NaN/Inf literal (Python's json would accept it, others would not)
    return {"op": "config.load", "args": [loader, _nest(path, value)],
            "expect": ["raises", "ValueError", _field_regex(path), r"unknown field"], "why": f"config/{path}"}


def _format_flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_format_flag_value(v) for v in value)
    return str(value)


def gen_cli_invalid(rng: random.Random) -> dict:
    """`matryoshka-ext train --print-config` with one bad flag: unknown, missing its value, unparsable, or out of
    range. Exits non-zero with the flag or field named, never a traceback."""
    kind = rng.choice(["unknown", "novalue", "dashdash", "parse", "parse", "range", "range"])
    if kind == "unknown":
        flag = "--" + rng.choice(["learning-rate", "transcoder.K", "dictsize", "zz" + str(rng.randint(0, 99))])
        return {"op": "cli.train", "args": [["train", "--print-config", flag, "1"]],
                "expect": ["raises", "CLIExit", re.escape(flag)], "why": "cli/unknown"}
    path, tp = rng.choice([(p, t) for p, t in FIELDS if p != "resume"])
    flag = "--" + (path if rng.random() < 0.5 else path.replace("_", "-"))
    if kind == "dashdash":  # argparse turns `--flag=--` into an empty list, not a string (was an AttributeError)
        return {"op": "cli.train", "args": [["train", "--print-config", flag + "=--"]],
                "expect": ["raises", "CLIExit", _field_regex(path)], "why": f"cli/dashdash/{path}"}
    if kind == "novalue":
        return {"op": "cli.train", "args": [["train", "--print-config", flag]],
                "expect": ["raises", "CLIExit", r"expected one argument"], "why": "cli/novalue"}
    inner, optional = _strip_optional(tp)
    if kind == "parse":
        bad = {int: ["1.5", "x", "1e400", "0x10", "[1]"], float: ["abc", "1/0", "--", "1,2"],
               bool: ["maybe", "2", "truee"], str: []}.get(inner, ["1,x", "[1, [2]]", "[1", "a b"])
        if not bad:  # any text is a valid string: fall back to an out-of-range value below
            kind = "range"
        else:
            text = rng.choice(bad)
            if text.startswith("-"):
                text = "=" + text  # argparse would read "--" as a flag: pass it as --flag=--
            argv = ["train", "--print-config", flag + text] if text.startswith("=") else ["train", "--print-config",
                                                                                               flag, text]
            return {"op": "cli.train", "args": [argv], "expect": ["raises", "CLIExit", _field_regex(path)],
                    "why": f"cli/parse/{path}"}
    values = _range_invalid(rng, path) + (["inf", "-inf", "nan"] if inner is float else [])
    if not values:
        return gen_cli_invalid(rng)  # this field takes any text; draw another case
    text = _format_flag_value(rng.choice(values))
    argv = ["train", "--print-config", f"{flag}={text}"]
    return {"op": "cli.train", "args": [argv], "expect": ["raises", "CLIExit", _field_regex(path)],
            "why": f"cli/range/{path}"}


def gen_any_config_case(rng: random.Random) -> dict:
    return gen_config_invalid(rng) if rng.random() < 0.6 else gen_cli_invalid(rng)


# ---------------------------------------------------------------------------------------------------------
# The callables behind the spec ops.


def load(loader: str, data: dict[str, Any]) -> TrainConfig:
    """Load `data` (a dict over the defaults) through the named loader."""
    import yaml

    full = _merge(TrainConfig().to_dict(), data)
    if loader == "dict":
        return TrainConfig.from_dict(full)
    if loader == "json":
        return TrainConfig.from_json(json.dumps(full))
    if loader == "yaml":
        return TrainConfig.from_yaml(yaml.safe_dump(full))
    with tempfile.TemporaryDirectory() as tmp:
        if loader == "sources":  # defaults < file (only the changed fields) < no overrides
            path = os.path.join(tmp, "cfg.yaml")
            with open(path, "w") as fh:
                fh.write(yaml.safe_dump(data))
            return config_from_sources(TrainConfig, path, None)
        path = os.path.join(tmp, "cfg." + loader.split(".", 1)[1])
        with open(path, "w") as fh:
            fh.write(json.dumps(full) if path.endswith(".json") else yaml.safe_dump(full))
        return TrainConfig.load(path)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cli_train(argv: list[str]) -> str:
    """Run `matryoshka-ext ARGV` in-process; returns stdout, raises CLIExit on a non-zero exit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code if isinstance(e.code, int) else 2
    if rc != 0:
        lines = err.getvalue().strip().splitlines() or ["(nothing on stderr)"]
        raise CLIExit(f"exit {rc}: {lines[-1]}")  # argparse and `train` put the error on the last line
    return out.getvalue()
