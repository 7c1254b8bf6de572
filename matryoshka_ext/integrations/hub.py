"""Hugging Face hub: a repo folder with one SAELens transcoder folder per layer, and its upload.

    <folder>/README.md                       model card: layers, sites, Matryoshka groups, how to load
    <folder>/layer_{L}/cfg.json              SAELens jumprelu_transcoder (see ``integrations.saelens``)
    <folder>/layer_{L}/sae_weights.safetensors

Loading from the hub afterwards: ``sae_lens.SAE.from_pretrained("OWNER/REPO", "layer_L")`` (SAELens takes any
hub repo as a release, the sub-folder as the SAE id) or ``mx.load_transcoder("hf:OWNER/REPO/layer_L")``.
The upload needs network access and a token (``huggingface-cli login`` or ``HF_TOKEN``); without either,
``push_to_hub`` fails within seconds with ``HubUnavailableError`` saying where the folder is and how to upload it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._common import jumprelu_weights
from .saelens import export_saelens


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached (offline, HF_HUB_OFFLINE) or no token is configured."""


def _layer_items(transcoders: Mapping[int, Any] | Sequence[Any]) -> list[tuple[int | None, Any]]:
    if isinstance(transcoders, Mapping):
        return list(transcoders.items())
    if isinstance(transcoders, (str, os.PathLike)) or not isinstance(transcoders, Sequence):
        return [(None, transcoders)]
    return [(None, t) for t in transcoders]


def build_hub_folder(
    transcoders: Mapping[int, Any] | Sequence[Any] | Any,
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    dtype: str | torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write the repo folder (``layer_{L}/`` SAELens folders + README.md) for ``transcoders``; returns it.

    ``transcoders``: ``{layer: transcoder}``, a sequence, or one transcoder (path / MatryoshkaTranscoder / loaded);
    layers and sites come from their metadata when not given as keys.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    seen: set[int] = set()
    for layer, tc in _layer_items(transcoders):
        w = jumprelu_weights(tc, layer=layer, model_name=model_name, dtype=dtype)
        lay = w.require_layer("hub export")
        w.require_sites("hub export")
        if lay in seen:
            raise ValueError(f"hub export: two transcoders for layer {lay}")
        seen.add(lay)
        export_saelens(w, folder / f"layer_{lay}", dtype=dtype, overwrite=overwrite)
        rows.append((lay, w))
    rows.sort(key=lambda r: r[0])
    (folder / "README.md").write_text(_model_card(rows, repo_id or "OWNER/REPO"))
    return folder


def _model_card(rows: list[tuple[int, Any]], repo_id: str) -> str:
    w0 = rows[0][1]
    skip = any(w.W_skip is not None for _, w in rows)
    layout = "`jumprelu_skip_transcoder` (with an affine skip connection W_skip)" if skip else "`jumprelu_transcoder`"
    lines = [
        "---",
        "library_name: saelens",
        "tags: [sae, transcoder, matryoshka, matryoshka-ext]",
        "---",
        "",
        f"# Matryoshka transcoders for {w0.hub_model_name or 'a TransformerLens model'}",
        "",
        "JumpReLU transcoders trained with [matryoshka-ext](https://pypi.org/project/matryoshka-ext/): each reads",
        "the MLP input site and predicts the MLP output site; latents form nested groups, so every prefix of the",
        f"dictionary is itself a transcoder. Stored in the SAELens {layout} layout.",
        "",
        "| folder | input hook | output hook | d_in -> d_out | latents | Matryoshka prefix ends |",
        "|---|---|---|---|---|---|",
    ]
    for lay, w in rows:
        lines.append(
            f"| `layer_{lay}` | `{w.input_hook}` | `{w.output_hook}` | {w.d_in} -> {w.d_out} | "
            f"{w.num_latents} | {w.prefix_ends or '-'} |"
        )
    lay = rows[0][0]
    lines += [
        "",
        "```python",
        "from sae_lens import SAE",
        f'sae = SAE.from_pretrained("{repo_id}", "layer_{lay}")   # JumpReLU{"Skip" if skip else ""}Transcoder',
        "# or, with matryoshka-ext (per-prefix decoding):",
        "import matryoshka_ext as mx",
        f'tc = mx.load_transcoder("hf:{repo_id}/layer_{lay}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created if missing); returns the commit URL.

    Raises ``HubUnavailableError`` at once when the hub is unreachable or no token is set (nothing retries).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder to upload")
    later = (
        f"The folder it would upload is ready at {folder}. Upload it later from a machine with network access:\n"
        f"    huggingface-cli upload {repo_id} {folder} .\n"
    )
    from ..data.models import hub_reachable

    if not hub_reachable():
        raise HubUnavailableError(
            f"--push-to-hub {repo_id}: the Hugging Face hub is unreachable (no network, or HF_HUB_OFFLINE is set). "
            + later
        )
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise HubUnavailableError(
            f"--push-to-hub {repo_id}: no Hugging Face token (run `huggingface-cli login` or set HF_TOKEN). " + later
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or "Upload Matryoshka transcoders (matryoshka-ext)",
    )
    return str(getattr(info, "commit_url", info))
