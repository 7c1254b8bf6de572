"""``matryoshka-ext export``: write trained transcoders in other codebases' layouts, and push them to the hub.

    matryoshka-ext export runs/L6 --to saelens out/saelens-L6
    matryoshka-ext export runs/L8 runs/L12 runs/L17 --to saelens out/sl --to circuit-tracer out/ct
    matryoshka-ext export runs/L6 --to dictionary-learning out/dl --push-to-hub me/gemma-matryoshka-tc

Each CHECKPOINT is anything ``mx.load_transcoder`` reads (run folder, checkpoint, save_pretrained folder, ...).
``--to FORMAT DIR`` may repeat: ``saelens`` and ``dictionary-learning`` write DIR itself for one checkpoint and
``DIR/layer_{L}`` for several; ``circuit-tracer`` writes one transcoder set (``config.yaml`` + ``layer_{L}``
files). ``--push-to-hub REPO`` builds ``--hub-folder`` (``layer_{L}/`` SAELens folders + README) and uploads it;
offline it stops at once with the folder's location and the command to upload it later (exit status 3).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

FORMATS = ("saelens", "circuit-tracer", "dictionary-learning")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``matryoshka-ext export``."""
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="run folder, checkpoint or transcoder folder")
    p.add_argument(
        "--to",
        nargs=2,
        action="append",
        default=[],
        metavar=("FORMAT", "DIR"),
        help=f"write FORMAT ({', '.join(FORMATS)}) into DIR; may repeat",
    )
    p.add_argument("--push-to-hub", metavar="REPO", help="upload one SAELens folder per layer to this hub model repo")
    p.add_argument("--hub-folder", metavar="DIR", help="where the hub repo folder is built (default: hub/REPO_NAME)")
    p.add_argument("--private", action="store_true", help="create the hub repo as private")
    p.add_argument("--revision", help="hub branch to upload to")
    p.add_argument("--layer", type=int, help="layer of the (single) checkpoint when its folder does not record it")
    p.add_argument("--input-hook", help="input site (default: blocks.L.ln2.hook_normalized)")
    p.add_argument("--output-hook", help="output site (default: blocks.L.hook_mlp_out)")
    p.add_argument("--model-name", help="model name recorded for peers (default: from the run)")
    p.add_argument("--n-layers", type=int, help="the model's layer count (circuit-tracer: is the set complete?)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="stored dtype")
    p.add_argument(
        "--dict-class",
        default="auto",
        choices=("auto", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"),
        help="dictionary-learning class to write",
    )
    p.add_argument("--overwrite", action="store_true", help="replace files already in the target folders")


def _weights(args: argparse.Namespace) -> list[Any]:
    from ._common import jumprelu_weights

    if args.layer is not None and len(args.checkpoints) > 1:
        raise ValueError("--layer applies to a single checkpoint; each of several must record its own layer")
    out = []
    for path in args.checkpoints:
        w = jumprelu_weights(
            path,
            layer=args.layer,
            input_hook=args.input_hook,
            output_hook=args.output_hook,
            model_name=args.model_name,
            dtype=args.dtype,
        )
        out.append(w)
    return out


def _sub(out_dir: str, w: Any, many: bool) -> str:
    return os.path.join(out_dir, f"layer_{w.require_layer('export of several checkpoints')}") if many else out_dir


def export_command(args: argparse.Namespace) -> int:
    """Run ``matryoshka-ext export``; returns the exit status (0 ok, 2 bad input, 3 hub unavailable)."""
    from .circuit_tracer import export_circuit_tracer
    from .dictionary_learning import export_dictionary_learning
    from .hub import HubUnavailableError, build_hub_folder, push_to_hub
    from .saelens import export_saelens

    if not args.to and not args.push_to_hub:
        print("matryoshka-ext export: nothing to do; give --to FORMAT DIR and/or --push-to-hub REPO", file=sys.stderr)
        return 2
    bad = [fmt for fmt, _ in args.to if fmt not in FORMATS]
    if bad:
        print(f"matryoshka-ext export: unknown format(s) {bad}; choose from {list(FORMATS)}", file=sys.stderr)
        return 2
    try:
        weights = _weights(args)
        many = len(weights) > 1
        if any(fmt == "dictionary-learning" for fmt, _ in args.to):  # refuse before any format is written
            for w in weights:
                w.require_no_skip("dictionary_learning export")
        for fmt, out_dir in args.to:
            if fmt == "saelens":
                for w in weights:
                    path = export_saelens(w, _sub(out_dir, w, many), dtype=args.dtype, overwrite=args.overwrite)
                    print(f"saelens: {path}  (sae_lens.SAE.load_from_disk)")
            elif fmt == "dictionary-learning":
                for w in weights:
                    path = export_dictionary_learning(
                        w,
                        _sub(out_dir, w, many),
                        dict_class=args.dict_class,
                        dtype=args.dtype,
                        overwrite=args.overwrite,
                    )
                    print(f"dictionary-learning: {path}  (dictionary_learning.utils.load_dictionary)")
            else:
                path = export_circuit_tracer(
                    weights, out_dir, n_layers=args.n_layers, dtype=args.dtype, overwrite=args.overwrite
                )
                print(f"circuit-tracer: {path}  (circuit_tracer load_transcoder_set / ReplacementModel)")
                _warn_incomplete(path)
        if args.push_to_hub:
            folder = args.hub_folder or os.path.join("hub", args.push_to_hub.rsplit("/", 1)[-1])
            build_hub_folder(weights, folder, repo_id=args.push_to_hub, dtype=args.dtype, overwrite=args.overwrite)
            print(f"hub folder: {folder}")
            url = push_to_hub(folder, args.push_to_hub, private=args.private, revision=args.revision)
            print(f"pushed: {url}")
    except HubUnavailableError as e:
        print(f"matryoshka-ext export: {e}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as e:
        print(f"matryoshka-ext export: {e}", file=sys.stderr)
        return 2
    return 0


def _warn_incomplete(path: Any) -> None:
    import yaml

    with open(os.path.join(path, "config.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    if not cfg.get("complete"):
        print(
            f"note: layers {cfg['layers']} do not cover every layer; circuit-tracer's TranscoderSet needs layers "
            "0..n_layers-1 (single layers load with circuit_tracer's load_relu_transcoder)",
            file=sys.stderr,
        )
