"""Configuration dataclasses: a transcoder's shape and loss (`TranscoderConfig`) and a run (`TrainConfig`).

Both round-trip through plain dicts, JSON and YAML (`to_dict`/`from_dict`, `save`/`load`), and every field
maps to a command-line flag (see `add_config_arguments`):

    --lr 3e-4  --total-tokens 1e6  --wandb-mode disabled          TrainConfig fields (dashes or underscores)
    --transcoder.k 32  --transcoder.group-sizes 512,512,1024      nested TranscoderConfig fields
    --k 32  --group-sizes 512,512,1024                             the same, flat, when unambiguous

Lists are given comma-separated or as a YAML/JSON list (`[512, 512]`); `none` means None; booleans accept
true/false/yes/no/1/0; floats accept simple fractions (`--aux-penalty 1/64`).
Validation raises `ConfigError` (a ValueError) naming the offending field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

SELECTIONS = ("batch", "row")
DECODER_NORMS = ("unit", "free")
DTYPES = ("float32", "bfloat16", "float16", "float64")
SCALINGS = ("unit_mean_squared_norm", "unit_rms", "none")
WANDB_MODES = ("online", "offline", "disabled")
CACHE_MODES = ("auto", "memory", "mmap")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class _Base:
    """Shared dict/JSON/YAML round-trip for the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Base) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kw = {}
        for k, v in d.items():
            sub = _nested_class(hints[k])
            kw[k] = sub.from_dict(v) if sub is not None and isinstance(v, dict) else v
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(_parse_json(text, cls.__name__))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str):
        return cls.from_dict(_parse_yaml(text, cls.__name__) or {})

    def save(self, path: str | os.PathLike) -> None:
        """Write as YAML (.yaml/.yml) or JSON (anything else)."""
        path = os.fspath(path)
        text = self.to_yaml() if path.endswith((".yaml", ".yml")) else self.to_json()
        with open(path, "w") as fh:
            fh.write(text)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read YAML or JSON (by extension; JSON is valid YAML, so unknown extensions go through YAML)."""
        return cls.from_dict(read_config_file(path))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass
class TranscoderConfig(_Base):
    """Shape, selection and loss of a Matryoshka transcoder: x [d_in] -> y [d_out] via dict_size latents."""

    d_in: int | None = _help("input width; None = take it from the activations", default=None)
    d_out: int | None = _help("output width; None = take it from the activations", default=None)
    dict_size: int = _help("number of latents F", default=4096)
    group_sizes: list[int] = _help(
        "sizes of the consecutive Matryoshka groups (sum == dict_size)",
        default_factory=lambda: [256, 256, 512, 1024, 2048],
    )
    group_sizes_cumulative: bool = _help(
        "legacy: read group_sizes as cumulative prefix ends (converted to sizes on load)", default=False
    )
    k: int = _help("active latents per token (BatchTopK: k*N over the batch)", default=32)
    selection: str = _help("training selection: 'batch' (BatchTopK) or 'row' (TopK)", default="batch")
    prefix_weights: list[float] | None = _help(
        "loss weight per prefix (one per group); None = 1 for every prefix but the last, final_prefix_weight for it",
        default=None,
    )
    final_prefix_weight: float = _help(
        "with prefix_weights None: loss weight of the full dictionary's prefix (the others weigh 1; a single "
        "group weighs 1). Above 1 it lowers the cost of nesting to the final prefix at a small cost to the first",
        default=1.0,
    )
    aux_k: int = _help("AuxK: latents chosen among the dead ones per token (0 = off)", default=256)
    aux_penalty: float = _help("AuxK loss coefficient", default=1 / 32)
    dead_tokens: int = _help("a latent is dead after this many tokens without firing", default=10_000_000)
    threshold_momentum: float = _help(
        "EMA momentum of the JumpReLU threshold (0 = last batch's minimum only)", default=0.99
    )
    init_encoder: str = _help(
        "encoder init from the first batch: 'linear' (W_lin @ W_dec^T, W_lin the least-squares map x -> y) "
        "or 'transpose' (W_dec^T, the SAE init; needs d_in == d_out)",
        default="linear",
    )
    init_encoder_scale: float = _help("extra factor on the fitted initial encoder scale", default=1.0)
    dtype: str = _help("parameter dtype", default="float32")
    activation_scaling: str = _help(
        "scalar scaling of x and y, folded back on save: 'unit_mean_squared_norm' (E||.||^2 = 1), "
        "'unit_rms' (E||.||^2 = width, i.e. mean squared entry 1) or 'none'",
        default="unit_mean_squared_norm",
    )
    decoder_norm: str = _help(
        "decoder rows while training: 'unit' (projected gradient, renormalised after every step) or 'free' "
        "(unconstrained, as sparsify's transcoders); either way the saved rows are unit norm (benchmarks/QUALITY.md)",
        default="unit",
    )
    skip_connection: bool = _help(
        "affine skip path: y_hat = decode(encode(x)) + x @ W_skip for every prefix (W_skip [d_in, d_out], trained, "
        "zero-initialised; as in Gemma Scope 2 and sparsify skip transcoders)",
        default=False,
    )

    def __post_init__(self) -> None:
        _check_types(self)
        if self.group_sizes_cumulative:
            ends = _int_list(self.group_sizes, "group_sizes")
            if any(b <= a for a, b in zip([0] + ends[:-1], ends)):
                raise ConfigError(
                    f"group_sizes: cumulative ends must be positive and strictly increasing, got {ends}"
                )
            self.group_sizes = [b - a for a, b in zip([0] + ends[:-1], ends)]
            self.group_sizes_cumulative = False
        self.validate()

    def validate(self) -> None:
        _check_types(self)
        for name in ("d_in", "d_out"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v <= 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {v!r}")
        if not _is_int(self.dict_size) or self.dict_size <= 0:
            raise ConfigError(f"dict_size must be a positive integer, got {self.dict_size!r}")
        sizes = _int_list(self.group_sizes, "group_sizes")
        if not sizes or any(s <= 0 for s in sizes):
            raise ConfigError(f"group_sizes must be a non-empty list of positive sizes, got {sizes}")
        if sum(sizes) != self.dict_size:
            hint = ""
            if sizes == sorted(sizes) and sizes[-1] == self.dict_size and len(sizes) > 1:
                hint = (
                    " They look like cumulative prefix ends; give group sizes "
                    f"{[b - a for a, b in zip([0] + sizes[:-1], sizes)]} or set group_sizes_cumulative=true."
                )
            raise ConfigError(
                f"group_sizes must sum to dict_size={self.dict_size}, got {sizes} (sum {sum(sizes)}).{hint}"
            )
        self.group_sizes = sizes
        if not _is_int(self.k) or not 1 <= self.k <= self.dict_size:
            raise ConfigError(f"k must be an integer in [1, dict_size={self.dict_size}], got {self.k!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.prefix_weights is not None:
            w = [float(x) for x in self.prefix_weights]
            if len(w) != len(sizes):
                raise ConfigError(
                    f"prefix_weights needs one weight per group ({len(sizes)}), got {len(w)}: {w}"
                )
            if any(x < 0 for x in w) or not any(x > 0 for x in w):
                raise ConfigError(f"prefix_weights must be >= 0 with at least one > 0, got {w}")
            self.prefix_weights = w
        w_last = self.final_prefix_weight
        if isinstance(w_last, bool) or not (isinstance(w_last, (int, float)) and 0 < w_last < math.inf):
            raise ConfigError(f"final_prefix_weight must be a finite number > 0, got {self.final_prefix_weight!r}")
        if (
            not _is_int(self.aux_k) or self.aux_k < 0
        ):  # larger than the dead count is fine: all of them are used
            raise ConfigError(f"aux_k must be a non-negative integer, got {self.aux_k!r}")
        if not self.aux_penalty >= 0:
            raise ConfigError(f"aux_penalty must be >= 0, got {self.aux_penalty!r}")
        if not _is_int(self.dead_tokens) or self.dead_tokens <= 0:
            raise ConfigError(f"dead_tokens must be a positive integer, got {self.dead_tokens!r}")
        if not 0 <= self.threshold_momentum < 1:
            raise ConfigError(f"threshold_momentum must be in [0, 1), got {self.threshold_momentum!r}")
        if self.decoder_norm not in DECODER_NORMS:
            raise ConfigError(f"decoder_norm must be one of {DECODER_NORMS}, got {self.decoder_norm!r}")
        if self.init_encoder not in ("linear", "transpose"):
            raise ConfigError(f"init_encoder must be 'linear' or 'transpose', got {self.init_encoder!r}")
        if not self.init_encoder_scale > 0:
            raise ConfigError(f"init_encoder_scale must be > 0, got {self.init_encoder_scale!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.activation_scaling not in SCALINGS:
            raise ConfigError(f"activation_scaling must be in {SCALINGS}, got {self.activation_scaling!r}")

    @property
    def group_ends(self) -> list[int]:
        """Cumulative prefix ends e_1 < ... < e_m == dict_size."""
        ends, total = [], 0
        for s in self.group_sizes:
            total += s
            ends.append(total)
        return ends

    @property
    def num_groups(self) -> int:
        return len(self.group_sizes)

    @property
    def weights(self) -> list[float]:
        """Loss weight per prefix: ``prefix_weights``, else 1 for each prefix but the last and
        ``final_prefix_weight`` for the last (1 for a single group: one loss has nothing to weigh against)."""
        if self.prefix_weights is not None:
            return list(self.prefix_weights)
        if self.num_groups == 1:
            return [1.0]
        return [1.0] * (self.num_groups - 1) + [float(self.final_prefix_weight)]


def offline_transcoder() -> TranscoderConfig:
    """The offline default's transcoder: TranscoderConfig defaults with free decoder rows while training, no AuxK
    (TrainConfig.revive_rate brings dead latents back; at this budget AuxK changed neither FVU nor the dead
    fraction and cost a quarter of the step), a dead threshold of 25k tokens (revival acts after ~25 silent
    steps: dead 3.3% -> 0.4% and final FVU 0.285 -> 0.271 with the weight below) and the last prefix's loss
    weighted 2 (nesting cost to the final prefix 3.7% -> ~1% for +1% FVU at the first). benchmarks/QUALITY.md."""
    return TranscoderConfig(dead_tokens=25_000, decoder_norm="free", aux_k=0, final_prefix_weight=2.0)


@dataclass
class TrainConfig(_Base):
    """One training run: model and sites, data, optimisation, logging, checkpoints, and the transcoder.

    The defaults are the offline default run (Gemma 3 270M layer 12, Debian corpus, ~10 minutes on 2 CPU
    cores): 300k tokens of activations cached once, 4 epochs over them. Layer 12 rather than 6 or 9: in
    layers 4-10 one or two dimensions of the MLP output carry 50-95% of its variance, which turns the FVU
    into a 2-dimensional regression that a few dense latents solve (most latents then die); at layer 12
    the top dimension carries ~10%.
    """

    # model and sites
    model_name: str = _help(
        "language model (data.models.load_model name); 'synthetic' = a synthetic sparse source (tests)",
        default="gemma-3-270m-offline",
    )
    layer: int = _help("transformer block whose MLP is transcoded", default=12)
    input_hook: str | None = _help("input site; None = blocks.L.ln2.hook_normalized", default=None)
    output_hook: str | None = _help("output site; None = blocks.L.hook_mlp_out", default=None)
    model_dtype: str = _help(
        "dtype the language model runs in (bfloat16: 2.4x the float32 forward on an avx512_bf16 CPU, clean CE "
        "within 0.001 nats; docs/MAIN_JOB.md)",
        default="bfloat16",
    )
    # text
    dataset: str = _help("HF dataset name, local file/dir, or 'offline' (Debian corpus)", default="offline")
    dataset_subset: str | None = _help("dataset config name (e.g. sample-10BT)", default=None)
    dataset_split: str = _help("dataset split to train on", default="train")
    eval_split: str | None = _help(
        "split for the held-out evaluation at the end (None = skip)", default="eval"
    )
    text_field: str = _help("text column of the dataset", default="text")
    streaming: bool = _help("stream the dataset", default=False)
    context_size: int = _help("tokens per context", default=256)
    prepend_bos: bool = _help("start each context with BOS (BOS positions are excluded)", default=True)
    lm_batch_contexts: int = _help("contexts per language-model forward", default=8)
    # activations
    buffer_tokens: int = _help("shuffling buffer size in tokens (streaming sources)", default=262_144)
    checkpoint_buffer: bool = _help(
        "store the buffer's rows in checkpoints: exact resume, but buffer_tokens*(d_in+d_out)*4 bytes each",
        default=True,
    )
    cache_tokens: int = _help(
        "if > 0: run the LM once for this many tokens, cache the activations on disk and train epochs over "
        "them (total_tokens / cache_tokens epochs); 0 = stream through a shuffling buffer",
        default=300_000,
    )
    cache_dir: str | None = _help(
        "activation cache folder; None = $MATRYOSHKA_EXT_CACHE/activations (~/.cache/matryoshka_ext)",
        default=None,
    )
    cache_dtype: str = _help("dtype of cached activations", default="bfloat16")
    cache_mode: str = _help(
        "how training reads the cache: memory (read in; fastest gathers), mmap (mapped; page cache shared by "
        "the ranks of a node, works beyond RAM), auto (memory when one copy per local rank fits in half the "
        "available memory)",
        default="auto",
    )
    eval_tokens: int = _help(
        "held-out tokens (from eval_split) for the final evaluation; 0 = skip. >= 100k so that a latent firing "
        "once per 100k tokens is not counted dead (the offline eval split holds ~127k tokens at context 256)",
        default=122_880,
    )
    # optimisation
    batch_tokens: int = _help("tokens per optimiser step", default=1024)
    total_tokens: int = _help("tokens to train on", default=1_200_000)
    lr: float = _help("peak learning rate (offline default: benchmarks/QUALITY.md, training experiments)", default=8e-3)
    min_lr: float | None = _help(
        "final learning rate of the cosine decay; None = 0.3 * lr (offline default: QUALITY.md experiments)",
        default=None,
    )
    warmup_steps: int = _help("linear warmup steps", default=100)
    adam_beta1: float = _help("Adam beta1", default=0.9)
    adam_beta2: float = _help("Adam beta2", default=0.999)
    grad_clip: float = _help("gradient-norm clip (0 = off)", default=1.0)
    ema_decay: float = _help(
        "if > 0: keep an exponential moving average of the parameters (decay min(ema_decay, (1+t)/(10+t)) at "
        "step t) and save/evaluate the averaged transcoder (decoder rows renormalised, the norm folded into the "
        "encoder, JumpReLU threshold recalibrated on the last batch); 0 = save the last weights",
        default=0.995,
    )
    density_cap: float = _help(
        "if > 0: a latent whose running firing rate (EMA over ~100 steps of training batches) exceeds this fraction "
        "of tokens has its encoder bias lowered by density_cap_rate * threshold after each step (bias-only load "
        "balancing, as DeepSeek-V3's auxiliary-loss-free balancing); 0 = off",
        default=0.4,
    )
    density_cap_rate: float = _help("bias step of density_cap, in units of the JumpReLU threshold", default=0.3)
    revive_rate: float = _help(
        "if > 0: every latent counted dead (not fired for transcoder.dead_tokens tokens) has its encoder bias "
        "raised by revive_rate * threshold after each step until it fires again (the other side of density_cap's "
        "bias balancing); 0 = off (AuxK alone)",
        default=0.05,
    )
    max_nonfinite_in_a_row: int = _help(
        "a step whose loss or gradient is NaN/Inf is skipped and counted; stop after this many in a row",
        default=10,
    )
    seed: int = _help("random seed", default=0)
    device: str = _help("'auto', 'cpu', 'cuda', 'cuda:1', ...", default="auto")
    autocast_bf16: bool = _help("bf16 autocast of the transcoder step (GPU only; off on CPU)", default=True)
    # logging and checkpoints
    log_every: int = _help("log metrics every N steps", default=10)
    ckpt_every: int = _help("checkpoint every N steps (and at the end); 0 = only at the end", default=200)
    keep_last: int = _help("keep the last K checkpoints", default=3)
    samples_every: int = _help(
        "every N steps, collect each latent's top activating held-out contexts into run_dir/samples/step_*"
        " (LM runs; 0 = off)",
        default=0,
    )
    samples_contexts: int = _help("held-out contexts scanned by samples_every", default=64)
    samples_top_n: int = _help("contexts kept per latent by samples_every", default=16)
    out_dir: str = _help("run folder root; the run writes to out_dir/run_name", default="runs")
    run_name: str | None = _help("run name; None = derived from model, layer and size", default=None)
    wandb_project: str = _help("W&B project", default="matryoshka-ext")
    wandb_entity: str | None = _help("W&B entity", default=None)
    wandb_mode: str = _help("W&B mode: online, offline or disabled", default="offline")
    progress: bool = _help("show a tqdm progress bar", default=True)
    resume: str | None = _help("resume from a checkpoint, or a run folder (its latest one)", default=None)
    transcoder: TranscoderConfig = field(
        default_factory=lambda: offline_transcoder(), metadata={"help": "transcoder"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.transcoder, dict):
            self.transcoder = TranscoderConfig.from_dict(self.transcoder)
        self.validate()

    def validate(self) -> None:
        _check_types(self)
        positive = (
            "context_size",
            "lm_batch_contexts",
            "buffer_tokens",
            "batch_tokens",
            "total_tokens",
            "log_every",
            "keep_last",
            "max_nonfinite_in_a_row",
            "samples_contexts",
            "samples_top_n",
        )
        for name in positive:
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("layer", "warmup_steps", "ckpt_every", "cache_tokens", "eval_tokens", "seed", "samples_every"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if self.total_tokens < self.batch_tokens:
            raise ConfigError(
                f"total_tokens ({self.total_tokens}) must be at least batch_tokens ({self.batch_tokens})"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must be None or in [0, lr={self.lr}], got {self.min_lr!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.grad_clip >= 0:
            raise ConfigError(f"grad_clip must be >= 0, got {self.grad_clip!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0 <= self.density_cap <= 1:
            raise ConfigError(f"density_cap must be in [0, 1], got {self.density_cap!r}")
        if not self.density_cap_rate >= 0:
            raise ConfigError(f"density_cap_rate must be >= 0, got {self.density_cap_rate!r}")
        if not self.revive_rate >= 0:
            raise ConfigError(f"revive_rate must be >= 0, got {self.revive_rate!r}")
        choices = {"model_dtype": DTYPES, "cache_dtype": DTYPES, "cache_mode": CACHE_MODES, "wandb_mode": WANDB_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.transcoder, TranscoderConfig):
            raise ConfigError(f"transcoder must be a TranscoderConfig, got {type(self.transcoder).__name__}")
        self.transcoder.validate()

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_tokens

    @property
    def final_lr(self) -> float:
        """The learning rate the cosine decay ends at: min_lr, or 0.3 * lr when min_lr is None."""
        return 0.3 * self.lr if self.min_lr is None else self.min_lr

    def default_run_name(self) -> str:
        tc = self.transcoder
        model = self.model_name.rsplit("/", 1)[-1]  # hub ids contain a slash
        return f"{model}-L{self.layer}-F{tc.dict_size}-k{tc.k}-{tc.selection}"


# ----------------------------------------------------------------------------------------------------------
# helpers


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping stored in a YAML or JSON config file (not yet validated)."""
    path = os.fspath(path)
    with open(path) as fh:
        text = fh.read()
    d = _parse_json(text, path) if path.endswith(".json") else (_parse_yaml(text, path) or {})
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
    return d


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON: {e}") from e


def _parse_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e


_INT64 = 2**63


def _type_problem(v: Any, tp: Any) -> str | None:
    """Why `v` is not a value of the field type `tp` (int, float, bool, str, list[...], X | None), else None."""
    inner, optional = _strip_optional(tp)
    if v is None:
        return None if optional else "must not be None"
    if inner is bool:
        return None if isinstance(v, bool) else "must be true or false"
    if inner is int:
        if not _is_int(v):
            return "must be an integer"
        return None if -_INT64 <= v < _INT64 else "is out of the 64-bit integer range"
    if inner is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "must be a number"
        return None if math.isfinite(v) else "must be finite"
    if inner is str:
        return None if isinstance(v, str) else "must be a string"
    if typing.get_origin(inner) is list:
        if not isinstance(v, (list, tuple)):
            return "must be a list"
        (elem,) = typing.get_args(inner)
        for x in v:
            # list[int] also takes integral floats (YAML/JSON may write 256.0): the field validator converts them.
            if elem is int and isinstance(x, float) and x.is_integer():
                continue
            why = _type_problem(x, elem)
            if why:
                return f"entries: each {why}"
        return None
    return None


def _check_types(cfg: _Base) -> None:
    """Raise ConfigError naming the first field whose value has the wrong type (nested configs are checked by
    their own validate). Runs before the range checks, so those compare numbers with numbers."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if _nested_class(hints[f.name]) is not None:
            continue
        v = getattr(cfg, f.name)
        why = _type_problem(v, hints[f.name])
        if why:
            raise ConfigError(f"{f.name} {why} ({_type_name(hints[f.name])}), got {v!r}")


def _int_list(v: Any, name: str) -> list[int]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ConfigError(f"{name} must be a list of integers, got {v!r}")
    out = []
    for x in v:
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        if not _is_int(x):
            raise ConfigError(f"{name} must be a list of integers, got {list(v)!r}")
        out.append(x)
    return out


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _nested_class(tp: Any) -> type[_Base] | None:
    inner, _ = _strip_optional(tp)
    return inner if isinstance(inner, type) and issubclass(inner, _Base) else None


# ----------------------------------------------------------------------------------------------------------
# command-line mapping


def parse_value(text: str, tp: Any, name: str = "value") -> Any:
    """Parse one command-line string into the field type `tp` (int, float, bool, str, list[...], Optional)."""
    inner, optional = _strip_optional(tp)
    if optional and text.strip().lower() in ("none", "null", "~", ""):
        return None
    try:
        if inner is bool:
            t = text.strip().lower()
            if t in ("1", "true", "yes", "on", "y"):
                return True
            if t in ("0", "false", "no", "off", "n"):
                return False
            raise ValueError(text)
        if inner is int:
            f = float(text) if any(c in text for c in ".eE") else None
            if f is not None:
                if not f.is_integer():
                    raise ValueError(text)
                return int(f)
            return int(text.replace("_", ""))
        if inner is float:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        if inner is str:
            return text
        if typing.get_origin(inner) is list:
            (elem,) = typing.get_args(inner)
            t = text.strip()
            if t.startswith("["):
                items = [str(x) for x in _parse_yaml(t, name)]
            else:
                items = [s for s in t.replace(" ", ",").split(",") if s]
            return [parse_value(s, elem, name) for s in items]
    except (ValueError, TypeError, ZeroDivisionError, OverflowError) as e:
        raise ConfigError(f"{name}: cannot parse {text!r} as {_type_name(tp)}") from e
    raise ConfigError(f"{name}: unsupported field type {tp!r}")


def _type_name(tp: Any) -> str:
    inner, optional = _strip_optional(tp)
    name = getattr(inner, "__name__", str(inner)) if typing.get_origin(inner) is None else str(inner)
    return f"{name} or none" if optional else name


def _flag_fields(cls: type[_Base], prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted path, type, help) for every leaf field of `cls`, recursing into nested configs."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = _nested_class(hints[f.name])
        if sub is not None:
            out += _flag_fields(sub, prefix + f.name + ".")
        else:
            out.append((prefix + f.name, hints[f.name], f.metadata.get("help", "")))
    return out


def add_config_arguments(parser: Any, cls: type[_Base] | None = None) -> None:
    """Add one flag per (nested) field of `cls` (default TrainConfig) to an argparse parser.

    Values land in the namespace under `cfg:<dotted path>` and only when given (argparse.SUPPRESS), so they
    can override a config file; read them back with `overrides_from_args`.
    """
    import argparse

    cls = cls or TrainConfig
    fields = _flag_fields(cls)
    leaf_counts: dict[str, int] = {}
    for path, _, _ in fields:
        leaf = path.rsplit(".", 1)[-1]
        leaf_counts[leaf] = leaf_counts.get(leaf, 0) + 1
    group = parser.add_argument_group(f"{cls.__name__} fields (nested: --transcoder.FIELD)")
    for path, tp, help_text in fields:
        names = {"--" + path, "--" + path.replace("_", "-")}
        leaf = path.rsplit(".", 1)[-1]
        if "." in path and leaf_counts[leaf] == 1:  # flat alias for an unambiguous nested field
            names |= {"--" + leaf, "--" + leaf.replace("_", "-")}
        group.add_argument(
            *sorted(names, key=lambda s: (s.count("."), s.count("_"), len(s)), reverse=True),
            dest="cfg:" + path,
            default=argparse.SUPPRESS,
            metavar=_type_name(tp).upper().replace(" ", "_"),
            help=help_text,
        )


def overrides_from_args(args: Any, cls: type[_Base] | None = None) -> dict[str, Any]:
    """The flags given on the command line as a nested dict of parsed values."""
    cls = cls or TrainConfig
    types_by_path = {path: tp for path, tp, _ in _flag_fields(cls)}
    nested: dict[str, Any] = {}
    for key, raw in vars(args).items():
        if not key.startswith("cfg:"):
            continue
        path = key[4:]
        if not isinstance(raw, str):  # argparse hands `--flag=--` over as [] (it drops the "--")
            raise ConfigError(f"{path}: cannot parse {raw!r} as {_type_name(types_by_path[path])}")
        value = parse_value(raw, types_by_path[path], path)
        node = nested
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


def merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update (returns a new dict)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_sources(
    cls: type[_Base] | None = None, file: str | None = None, overrides: dict[str, Any] | None = None
) -> Any:
    """defaults < config file < overrides. Raises ConfigError naming a bad field."""
    cls = cls or TrainConfig
    d = cls().to_dict()
    if file is not None:
        d = merge_dicts(d, read_config_file(file))
    if overrides:
        d = merge_dicts(d, overrides)
    # re-run the legacy conversion etc. on the merged values
    return cls.from_dict(d)
