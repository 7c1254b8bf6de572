"""Command line: `matryoshka-ext <command> ...` (also `python -m matryoshka_ext.cli <command> ...`).

Commands live in one table, `COMMANDS`. To add one (eval, compare, samples, export, ...), write a function
that adds its arguments and one that runs it, then register both:

    def _eval_args(p: argparse.ArgumentParser) -> None: p.add_argument("path")
    def _eval(args: argparse.Namespace) -> int: ...; return 0
    register_command("eval", "evaluate a trained transcoder", _eval_args, _eval)

Heavy imports belong inside the run function, so `matryoshka-ext --help` stays fast.

`train` builds a TrainConfig from: defaults (the offline Gemma 3 270M run) < `--config FILE` (YAML/JSON)
< `--field value` flags (`--lr 1e-3`, `--total-tokens 2e6`, `--transcoder.k 32` or flat `--k 32`,
`--group-sizes 256,256,512`, `--wandb-mode disabled`). With `--resume DIR` the checkpoint's own config is
the base instead of the defaults, and flags still override it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add a subcommand (replacing any of the same name)."""
    COMMANDS[name] = Command(name, help, add_arguments, run)


# ----------------------------------------------------------------------------------------------------------
# train


def _train_args(p: argparse.ArgumentParser) -> None:
    from .config import add_config_arguments

    p.add_argument("--config", metavar="FILE", help="YAML or JSON TrainConfig (flags override it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_config_arguments(p)


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig a `train` command line describes (see the module docstring for precedence)."""
    from .config import TrainConfig, config_from_sources, merge_dicts, overrides_from_args

    overrides = overrides_from_args(args)
    resume = overrides.get("resume")
    if resume:
        from .training.checkpoint import load_checkpoint_config

        base = load_checkpoint_config(resume).to_dict()
        if args.config:
            from .config import read_config_file

            base = merge_dicts(base, read_config_file(args.config))
        return TrainConfig.from_dict(merge_dicts(base, overrides))
    return config_from_sources(TrainConfig, args.config, overrides)


def _train(args: argparse.Namespace) -> int:
    from .config import ConfigError

    try:
        cfg = train_config_from_args(args)
    except ConfigError as e:
        print(f"matryoshka-ext train: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from .training import run_training
    from .training.distributed import DistContext, destroy_distributed, end_launched_rank

    try:  # under torchrun: every rank trains, rank 0 reports
        result = run_training(cfg)
        if DistContext.current().is_main:
            print("\n".join(result.summary_lines()))
    finally:
        destroy_distributed()
    end_launched_rank()
    return 0


register_command("train", "train a Matryoshka transcoder (no flags: offline default)", _train_args, _train)


def _train_multi_args(p: argparse.ArgumentParser) -> None:
    _train_args(p)
    p.add_argument("--layers", help="layers to train, comma-separated (e.g. 8,12,17); with --resume: the run's")
    p.add_argument(
        "--spread-layers",
        action="store_true",
        help="under torchrun: layer i trains on rank i %% world_size alone (default: all ranks train every "
        "layer, data-parallel)",
    )


def _train_multi(args: argparse.Namespace) -> int:
    from .config import ConfigError, TrainConfig, config_from_sources, merge_dicts, overrides_from_args

    try:
        overrides = overrides_from_args(args)
        resume = overrides.pop("resume", None)
        if resume:  # the run's own config (its first layer's) is the base; flags override it
            from .config import read_config_file
            from .training.checkpoint import load_checkpoint_config
            from .training.multi import layer_dir, read_multi_layers

            saved = read_multi_layers(resume)
            base = load_checkpoint_config(layer_dir(resume, saved[0])).to_dict()
            if args.config:
                base = merge_dicts(base, read_config_file(args.config))
            cfg = TrainConfig.from_dict(merge_dicts(base, overrides)).replace(resume=resume)
            layers_arg = args.layers or saved
        else:
            cfg = config_from_sources(TrainConfig, args.config, overrides)
            layers_arg = args.layers
        if not layers_arg:
            raise ConfigError("--layers is required (e.g. --layers 8,12,17)")
        from .training.multi import parse_layers

        layers = parse_layers(layers_arg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"matryoshka-ext train-multi: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(f"# layers: {layers}")
        print(cfg.to_yaml(), end="")
        return 0
    from .training.distributed import DistContext, destroy_distributed, end_launched_rank
    from .training.multi import run_multi_training

    try:
        results = run_multi_training(cfg, layers, spread=args.spread_layers)
        if args.spread_layers or DistContext.current().is_main:  # each layer reported once
            for layer, result in results.items():
                print(f"== layer {layer}")
                parent = os.path.dirname(os.path.normpath(result.run_dir))  # layer folders sit in the run folder
                again = f"matryoshka-ext train-multi --layers {','.join(map(str, layers))} --resume {parent}"
                print("\n".join(result.summary_lines(resume_command=again)))
    finally:
        destroy_distributed()
    end_launched_rank()
    return 0


register_command(
    "train-multi",
    "train transcoders for several layers from one pass of the model (--layers 8,12,17)",
    _train_multi_args,
    _train_multi,
)


def _register_other_commands() -> None:
    # Both modules import argparse only at module level; their heavy imports happen inside the commands.
    from .eval.commands import COMMANDS as EVAL_COMMANDS
    from .integrations.commands import add_export_arguments, export_command

    for name, (help_text, add_arguments, run) in EVAL_COMMANDS.items():
        register_command(name, help_text, add_arguments, run)
    register_command(
        "export",
        "write transcoders for SAELens / circuit-tracer / dictionary_learning; push to the hub",
        add_export_arguments,
        export_command,
    )
    from .eval.interp_command import add_interp_arguments, interp_command

    register_command(
        "interp",
        "feature absorption per prefix, the latent hierarchy and latent pages (HTML browser) for transcoders",
        add_interp_arguments,
        interp_command,
    )


_register_other_commands()


# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matryoshka-ext", description="Matryoshka transcoders on fused sparse kernels."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `matryoshka-ext` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        # Training handles the first Ctrl-C itself (checkpoint, then exit 0); this is a Ctrl-C during set-up
        # (model load, activation caching: a partial cache is discarded) or a second one: no traceback.
        print("matryoshka-ext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
