"""Readers for each on-disk transcoder format; ``load_transcoder`` picks one by looking at the files.

Formats (all pickle-free):

* ours, ``save_pretrained`` folder: ``config.json`` (``"format": "matryoshka-ext-transcoder"``) +
  ``model.safetensors``; also a training run folder (``transcoder/`` inside, or the latest
  ``checkpoints/step_*``) or a checkpoint folder (``state.json`` + ``model.safetensors``).
* Gemma Scope (1): ``params.npz`` with ``W_enc [d_in, F]``, ``W_dec [F, d_out]``, ``b_enc [F]``,
  ``b_dec [d_out]``, ``threshold [F]`` (keys may be lower case ``w_enc``/``w_dec``). JumpReLU
  ``a = pre * (pre > threshold)``, no input bias (the transcoders read ``ln2.hook_normalized``).
* Gemma Scope 2: ``params.safetensors`` with ``w_enc``, ``w_dec``, ``b_enc``, ``b_dec``, ``threshold`` and
  optionally ``affine_skip_connection [d_in, d_out]``, added as ``x @ affine_skip_connection`` (the
  orientation of Google's reference code; SAELens 6 multiplies by its transpose instead).
* SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, and
  ``threshold`` / ``W_skip [d_out, d_in]`` where the architecture has them). Architectures: ``standard``
  (ReLU), ``jumprelu``, ``topk`` (``k``, or pre-6.0 ``activation_fn_kwargs.k``), ``batchtopk``, and the
  transcoder variants ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
  ``jumprelu_skip_transcoder`` (``d_out``). Plain SAEs subtract ``b_dec`` from the input when
  ``apply_b_dec_to_input`` is set (transcoders never do: their ``b_dec`` lives in the output space).
* circuit-tracer (0.5): one ``layer_{L}.safetensors`` of a transcoder set (``config.yaml`` with ``model_kind:
  transcoder_set`` beside it): ``W_enc [F, d]`` (it computes ``F.linear(x, W_enc, b_enc)``), ``b_enc``,
  ``W_dec [F, d]``, ``b_dec``, ``activation_function.threshold [F]`` (JumpReLU ``pre * (pre > threshold)``; ReLU
  without it) and optionally ``W_skip [d_out, d_in]`` (it adds ``x @ W_skip.T``). Pass the layer file; a set folder
  holds several.

Skip matrices are read wherever a format has one (Gemma Scope 2, SAELens skip transcoders, circuit-tracer) and come
out as ``SparseTranscoder.W_skip [d_in, d_out]``, added by ``reconstruct`` / ``forward`` (``decode`` is the sparse
part alone).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .base import BaseTranscoder, MatryoshkaAdapter, SparseTranscoder

OURS_FORMAT = "matryoshka-ext-transcoder"
SAELENS_CFG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
HUB_PREFIX = "hf:"
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


class FormatError(ValueError):
    """The files at a path are not (a complete copy of) any supported transcoder format."""


# ---------------------------------------------------------------------------------------------- helpers
def _layer_from_text(text: str) -> int | None:
    """Layer number from a Gemma Scope folder name (``layer_12``) or a hook name (``blocks.12.``)."""
    m = re.search(r"layer_(\d+)", text) or re.search(r"blocks\.(\d+)\.", text)
    return int(m.group(1)) if m else None


def _default_name(path: Path) -> str:
    parts = [p for p in path.parts if p not in ("/", "")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else (parts[-1] if parts else "transcoder")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as e:  # its messages do not name the file
        raise FormatError(f"{path}: not a valid safetensors file ({e})") from None


def _pick(d: dict[str, Any], *names: str, where: str) -> Any:
    for n in names:
        if n in d:
            return d[n]
    raise FormatError(f"{where}: missing tensor {names[0]!r} (have {sorted(d)})")


# ---------------------------------------------------------------------------------------------- Gemma Scope
def load_gemma_scope_npz(path: str | os.PathLike, name: str | None = None) -> SparseTranscoder:
    """Gemma Scope ``params.npz`` (a file, or a folder holding one) -> JumpReLU ``SparseTranscoder``."""
    import numpy as np

    p = Path(path)
    f = p / "params.npz" if p.is_dir() else p
    with np.load(f, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in arrays.items()}
    return _gemma_scope_from_tensors(t, f, name, "gemma-scope")


def load_gemma_scope_safetensors(path: str | os.PathLike, name: str | None = None) -> SparseTranscoder:
    """Gemma Scope 2 ``params.safetensors`` (a file, or a folder holding one) -> ``SparseTranscoder``."""
    p = Path(path)
    f = p / "params.safetensors" if p.is_dir() else p
    t = {k: v.float() for k, v in _read_safetensors(f).items()}
    return _gemma_scope_from_tensors(t, f, name, "gemma-scope-2")


def _gemma_scope_from_tensors(t: dict[str, torch.Tensor], f: Path, name: str | None, fmt: str) -> SparseTranscoder:
    where = str(f)
    W_enc = _pick(t, "W_enc", "w_enc", where=where)
    W_dec = _pick(t, "W_dec", "w_dec", where=where)
    skip = t.get("affine_skip_connection")
    if "scaling_factor" in t and not torch.allclose(t["scaling_factor"], torch.ones_like(t["scaling_factor"])):
        raise FormatError(f"{where}: a non-unit 'scaling_factor' is not supported (fold it into the weights)")
    meta = {"format": fmt, "path": str(f), "layer": _layer_from_text(str(f))}
    return SparseTranscoder(
        W_enc,
        _pick(t, "b_enc", where=where),
        W_dec,
        _pick(t, "b_dec", where=where),
        activation="jumprelu",
        threshold=_pick(t, "threshold", where=where),
        W_skip=skip,
        name=name or _default_name(f.parent),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------- SAELens
def load_saelens(path: str | os.PathLike, name: str | None = None) -> SparseTranscoder:
    """A SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) -> ``SparseTranscoder``."""
    p = Path(path)
    with open(p / SAELENS_CFG) as fh:
        cfg = json.load(fh)
    where = str(p / SAELENS_WEIGHTS)
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")).replace("torch.", ""), torch.float32)
    t = {k: v.to(dtype) for k, v in _read_safetensors(p / SAELENS_WEIGHTS).items()}
    arch = str(cfg.get("architecture", "standard"))
    act_fn = str(cfg.get("activation_fn", cfg.get("activation_fn_str", "relu")))
    is_transcoder = "transcoder" in arch
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in", False):
        # constant_norm_rescale / layer_norm rescale every token at run time; not part of our interface
        raise FormatError(f"{p}: normalize_activations={norm!r} is not supported (only 'none')")
    if t.get("finetuning_scaling_factor") is not None or cfg.get("finetuning_scaling_factor") is True:
        raise FormatError(f"{p}: finetuning_scaling_factor is not supported")
    if "scaling_factor" in t and not torch.allclose(t["scaling_factor"], torch.ones_like(t["scaling_factor"])):
        raise FormatError(f"{p}: a non-unit 'scaling_factor' is not supported")

    base = arch.replace("_skip_transcoder", "").replace("_transcoder", "").replace("skip_transcoder", "")
    if arch in ("transcoder", "skip_transcoder"):
        base = "standard"
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    threshold = t.get("threshold")
    if threshold is None and "log_threshold" in t:
        threshold = t["log_threshold"].exp()
    if base == "jumprelu":
        activation = "jumprelu"
    elif base in ("topk",) or act_fn == "topk":
        activation = "topk"
    elif base == "batchtopk":
        activation = "jumprelu" if threshold is not None else "batchtopk"
    elif base in ("standard", "relu"):
        activation = "relu"
    else:
        raise FormatError(f"{p}: SAELens architecture {arch!r} is not supported")
    if activation in ("topk", "batchtopk"):
        if k is None:
            raise FormatError(f"{p}: architecture {arch!r} needs 'k' in cfg.json")
        k = int(k)

    W_enc = _pick(t, "W_enc", where=where)
    W_dec = _pick(t, "W_dec", where=where)
    b_dec = _pick(t, "b_dec", where=where)
    b_enc = t.get("b_enc", torch.zeros(W_enc.shape[1], dtype=W_enc.dtype))
    input_bias = None
    if not is_transcoder and cfg.get("apply_b_dec_to_input", True):
        input_bias = b_dec  # an SAE: d_in == d_out, b_dec is subtracted before encoding
    W_skip = t.get("W_skip")
    if W_skip is not None:
        W_skip = W_skip.t()  # SAELens stores [d_out, d_in] and adds x @ W_skip.T
    meta_in = cfg.get("metadata") or cfg.get("meta") or {}
    hook_in = meta_in.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    hook_out = cfg.get("hook_name_out") or meta_in.get("hook_name_out")
    meta = {
        "format": "saelens",
        "architecture": arch,
        "path": str(p),
        "input_hook": hook_in,
        "output_hook": hook_out,
        "model_name": meta_in.get("model_name") or cfg.get("model_name"),
        "layer": _layer_from_text(hook_in) if hook_in else _layer_from_text(str(p)),
    }
    return SparseTranscoder(
        W_enc,
        b_enc,
        W_dec,
        b_dec,
        activation=activation,
        threshold=threshold,
        k=k,
        input_bias=input_bias,
        W_skip=W_skip,
        relu_first=True,  # SAELens: relu(pre) * (pre > threshold)
        name=name or _default_name(p),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------- circuit-tracer
CT_CONFIG = "config.yaml"


def _ct_set_config(folder: Path) -> dict[str, Any] | None:
    """The ``config.yaml`` of a circuit-tracer transcoder set in ``folder``, or None (absent, or another file)."""
    f = folder / CT_CONFIG
    if not f.is_file():
        return None
    try:
        import yaml

        with open(f) as fh:
            d = yaml.safe_load(fh)
    except Exception:  # noqa: BLE001 - an unreadable config.yaml is simply not a circuit-tracer set
        return None
    return d if isinstance(d, dict) and d.get("model_kind") == "transcoder_set" else None


def load_circuit_tracer(path: str | os.PathLike, name: str | None = None) -> SparseTranscoder:
    """One circuit-tracer layer file (``layer_{L}.safetensors``) -> ``SparseTranscoder`` (JumpReLU or ReLU, skip
    matrix kept); sites, model and our Matryoshka prefixes come from the set's ``config.yaml`` when present."""
    f = Path(path)
    where = str(f)
    t = {k: v.float() for k, v in _read_safetensors(f).items()}
    if "k" in t:
        raise FormatError(f"{where}: top-k circuit-tracer transcoders are not supported (JumpReLU and ReLU are)")
    W_enc = _pick(t, "W_enc", where=where).t().contiguous()  # stored [F, d_in]
    W_skip = t.get("W_skip")
    if W_skip is not None:
        W_skip = W_skip.t().contiguous()  # stored [d_out, d_in]
    threshold = t.get("activation_function.threshold")
    layer = _layer_from_text(f.name)
    cfg = _ct_set_config(f.parent) or {}
    meta: dict[str, Any] = {
        "format": "circuit-tracer",
        "path": where,
        "layer": layer,
        "model_name": cfg.get("model_name"),
    }
    if layer is not None:
        for key, hook in (("input_hook", "feature_input_hook"), ("output_hook", "feature_output_hook")):
            if cfg.get(hook):
                meta[key] = f"blocks.{layer}.{cfg[hook]}"
    ours = (cfg.get("matryoshka_ext") or {}).get(str(layer)) or {}
    return SparseTranscoder(
        W_enc,
        _pick(t, "b_enc", where=where),
        _pick(t, "W_dec", where=where),
        _pick(t, "b_dec", where=where),
        activation="jumprelu" if threshold is not None else "relu",
        threshold=threshold,
        W_skip=W_skip,
        prefix_ends=ours.get("matryoshka_prefix_ends"),
        name=name or _default_name(f),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------- ours
_SITE_KEYS = ("layer", "input_hook", "output_hook", "model_name")


def _run_meta(folder: Path) -> dict[str, Any]:
    """Sites and model of the training run a folder belongs to (run folder, its transcoder/, or a checkpoint).

    Reads the run's ``config.yaml`` (written by the trainer) as a plain mapping, so a config from another
    version of the package still yields its layer and hooks; falls back to the latest checkpoint's config.
    """
    raw: dict[str, Any] | None = None
    for cand in (folder, folder.parent, folder.parent.parent, folder.parent.parent.parent):
        for fname in ("config.yaml", "config.yml"):
            f = cand / fname
            if f.is_file():
                try:
                    import yaml

                    with open(f) as fh:
                        d = yaml.safe_load(fh)
                except Exception:  # noqa: BLE001 - unreadable metadata must not block loading the weights
                    continue
                if isinstance(d, dict) and "layer" in d:
                    raw = d
                    break
        if raw is not None:
            break
    if raw is None:
        try:
            from ..training.checkpoint import load_checkpoint_config

            raw = load_checkpoint_config(str(folder)).to_dict()
        except Exception:  # noqa: BLE001 - no checkpoint, or one from an incompatible version
            return {}
    from ..data.sites import sites_for

    try:
        s = sites_for(int(raw["layer"]), raw.get("input_hook"), raw.get("output_hook"))
    except (KeyError, TypeError, ValueError):
        return {}
    return {
        "layer": s.layer,
        "input_hook": s.input_hook,
        "output_hook": s.output_hook,
        "model_name": raw.get("model_name"),
    }


def load_ours(
    path: str | os.PathLike, name: str | None = None, mode: str = "jumprelu", device: Any = None
) -> MatryoshkaAdapter:
    """A ``save_pretrained`` folder, a training checkpoint folder, or a run folder -> ``MatryoshkaAdapter``."""
    from ..transcoder import CONFIG_NAME, MatryoshkaTranscoder

    p = Path(path)
    if (p / "transcoder" / CONFIG_NAME).is_file():  # a run folder: its final transcoder
        p = p / "transcoder"
    if (p / CONFIG_NAME).is_file():
        model = MatryoshkaTranscoder.from_pretrained(str(p), device=device)
        meta = {"format": "matryoshka-ext", "path": str(p), **_run_meta(p)}
        with open(p / CONFIG_NAME) as fh:  # site metadata, if save_pretrained recorded it
            raw = json.load(fh)
        for key in _SITE_KEYS:
            if raw.get(key) is not None:
                meta[key] = raw[key]
        return MatryoshkaAdapter(model.eval(), mode=mode, name=name or _default_name(p), meta=meta)
    return _load_ours_checkpoint(p, name, mode, device)


def _load_ours_checkpoint(p: Path, name: str | None, mode: str, device: Any) -> MatryoshkaAdapter:
    from ..training.checkpoint import load_checkpoint_config, resolve_checkpoint
    from ..transcoder import MatryoshkaTranscoder

    ckpt = Path(resolve_checkpoint(str(p)))
    cfg = load_checkpoint_config(str(ckpt))
    sd = _read_safetensors(ckpt / "model.safetensors")
    tc = cfg.transcoder
    if tc.d_in is None or tc.d_out is None:  # the config may leave widths to the data: read them off W_enc/W_dec
        tc = tc.replace(d_in=int(sd["W_enc"].shape[0]), d_out=int(sd["W_dec"].shape[1]))
    model = MatryoshkaTranscoder(tc, device=device)
    model.load_state_dict(sd)
    meta = {"format": "matryoshka-ext-checkpoint", "path": str(ckpt), **_run_meta(ckpt)}
    return MatryoshkaAdapter(model.eval(), mode=mode, name=name or _default_name(ckpt), meta=meta)


# ---------------------------------------------------------------------------------------------- detection
def detect_format(path: str | os.PathLike) -> str:
    """One of "ours", "ours-checkpoint", "gemma-scope", "gemma-scope-2", "saelens", "circuit-tracer"; FormatError
    otherwise."""
    p = Path(path)
    if p.is_file():
        if p.suffix == ".npz":
            return "gemma-scope"
        if p.suffix == ".safetensors":
            if _safetensors_has(p, "w_enc"):
                return "gemma-scope-2"
            if _safetensors_has(p, "activation_function.threshold") or _ct_set_config(p.parent) is not None:
                return "circuit-tracer"
            return _detect_dir(p.parent, p)
        raise FormatError(f"{p}: unsupported file type (expected .npz, .safetensors or a folder)")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    return _detect_dir(p, p)


def _detect_dir(p: Path, original: Path) -> str:
    cfg = p / "config.json"
    if cfg.is_file():
        try:
            with open(cfg) as fh:
                if json.load(fh).get("format") == OURS_FORMAT:
                    return "ours"
        except (json.JSONDecodeError, AttributeError):
            pass
    if (p / "transcoder" / "config.json").is_file():
        return "ours"
    if (p / SAELENS_CFG).is_file() and (p / SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (p / "params.npz").is_file():
        return "gemma-scope"
    if (p / "params.safetensors").is_file():
        return "gemma-scope-2"
    if (p / "state.json").is_file() or (p / "checkpoints").is_dir():
        return "ours-checkpoint"
    if _ct_set_config(p) is not None:
        raise FormatError(
            f"{original}: a circuit-tracer transcoder set; pass one of its layer files (layer_L.safetensors)"
        )
    raise FormatError(
        f"{original}: not a supported transcoder (looked for config.json [ours], cfg.json + sae_weights.safetensors "
        "[SAELens], params.npz [Gemma Scope], params.safetensors [Gemma Scope 2], state.json [checkpoint])"
    )


def _safetensors_has(path: Path, key: str) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return key in f.keys()  # noqa: SIM118 - safe_open has keys(), not __contains__
    except SafetensorError as e:
        raise FormatError(f"{path}: not a valid safetensors file ({e})") from None


# ---------------------------------------------------------------------------------------------- hub
_HUB_FILES = ("params.npz", "params.safetensors", SAELENS_CFG)


def download_from_hub(spec: str, cache_dir: str | None = None) -> Path:
    """``hf:OWNER/REPO/SUB/FOLDER`` -> local folder (or file) holding the transcoder, via huggingface_hub.

    Fails within seconds when the hub is unreachable and the files are not in the local HF cache.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    rest = spec[len(HUB_PREFIX) :].strip("/")
    parts = rest.split("/")
    if len(parts) < 2:
        raise ValueError(f"hub spec must be hf:OWNER/REPO[/FOLDER...], got {spec!r}")
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    file_spec = folder.endswith((".npz", ".safetensors"))
    if file_spec:
        candidates: tuple[str, ...] = (folder,)
    else:
        candidates = tuple(f"{folder}/{f}" if folder else f for f in _HUB_FILES)

    # the local HF cache first: works offline
    for fname in candidates:
        hit = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
        if isinstance(hit, str):
            if fname.endswith(SAELENS_CFG):
                weights = try_to_load_from_cache(
                    repo_id, fname[: -len(SAELENS_CFG)] + SAELENS_WEIGHTS, cache_dir=cache_dir
                )
                if not isinstance(weights, str):
                    continue
            return Path(hit) if file_spec else Path(hit).parent

    from ..data.models import hub_reachable

    if not hub_reachable():
        pattern = folder if file_spec else (folder + "/*" if folder else "*")
        raise RuntimeError(
            f"{spec}: the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set) and these files are not in the "
            f"local HF cache. On a machine with network access run\n    huggingface-cli download {repo_id} "
            f"--include '{pattern}'\nthen copy the HF cache here, or pass the local "
            "folder / params file to load_transcoder instead."
        )
    from huggingface_hub.utils import EntryNotFoundError

    last: Exception | None = None
    for fname in candidates:
        try:
            local = hf_hub_download(repo_id, fname, cache_dir=cache_dir)
            if fname.endswith(SAELENS_CFG):
                hf_hub_download(repo_id, fname[: -len(SAELENS_CFG)] + SAELENS_WEIGHTS, cache_dir=cache_dir)
            return Path(local) if file_spec else Path(local).parent
        except EntryNotFoundError as err:
            last = err
    raise FileNotFoundError(f"{spec}: none of {list(candidates)} exists in {repo_id}") from last


# ---------------------------------------------------------------------------------------------- entry point
def load_transcoder(
    path: str | os.PathLike | Any,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    name: str | None = None,
    mode: str = "jumprelu",
    cache_dir: str | None = None,
) -> BaseTranscoder:
    """Load any supported transcoder into the common ``BaseTranscoder`` interface.

    ``path``: a folder or file on disk (format detected from the files, see the module docstring), a hub
    spec ``"hf:OWNER/REPO/FOLDER"`` (e.g. ``hf:google/gemma-scope-2b-pt-transcoders/layer_12/width_16k/
    average_l0_82``; fails fast offline), or an in-memory ``MatryoshkaTranscoder`` / ``BaseTranscoder``.
    ``mode`` (our transcoders only): "jumprelu" (inference), "batch" or "row" (training selection).
    ``dtype`` casts the weights (e.g. torch.bfloat16); ``device`` moves them.
    """
    if isinstance(path, BaseTranscoder):
        tc = path
    elif type(path).__name__ == "MatryoshkaTranscoder":
        tc = MatryoshkaAdapter(path, mode=mode, name=name or "matryoshka")
    else:
        spec = os.fspath(path)
        if spec.startswith(HUB_PREFIX):
            local = download_from_hub(spec, cache_dir)
            tc = load_transcoder(local, device, dtype, name or spec[len(HUB_PREFIX) :], mode)
            tc.meta.setdefault("hub", spec)
            return tc
        fmt = detect_format(spec)
        if fmt in ("ours", "ours-checkpoint", "saelens") and Path(spec).is_file():
            spec = str(Path(spec).parent)  # e.g. .../model.safetensors or .../sae_weights.safetensors
        if fmt in ("ours", "ours-checkpoint"):
            tc = load_ours(spec, name, mode, device)
        elif fmt == "gemma-scope":
            tc = load_gemma_scope_npz(spec, name)
        elif fmt == "gemma-scope-2":
            tc = load_gemma_scope_safetensors(spec, name)
        elif fmt == "circuit-tracer":
            tc = load_circuit_tracer(spec, name)
        else:
            tc = load_saelens(spec, name)
    if dtype is not None:
        tc = tc.to(dtype=dtype)
    if device is not None:
        tc = tc.to(device=device)
    return tc.eval()
