"""The command line parsed twice, so that a checkpoint supplies the model and data settings the user left out.

The first parse finds ``ckpt_path`` and the folders to search for ``last`` however they were given (either spelling
on the command line, a ``--config`` file, a preset); the checkpoint's model and data settings then become parser
defaults and the same arguments are parsed again, so anything the user gave still wins. Nothing is imported for a
class the checkpoint names unless it is one of this package's classifiers or the class the user gave.
"""

from __future__ import annotations

import inspect
import sys
from argparse import Namespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from mnist_lightning.checkpoints import (
    CheckpointInfo,
    check_data_settings,
    check_settings,
    classifier_class,
    data_dir_to_evaluate,
    find_last,
    inspect_checkpoint,
    known_class_paths,
    read_checkpoint,
    resolve_last,
    searched,
)
from mnist_lightning.cli.logger_settings import continue_wandb_run, follow_root_dir, logger_folders
from mnist_lightning.cli.messages import EXPECTED, PROG, OneLineErrorParser, TentativeParseError
from mnist_lightning.cli.presets import resolve_preset_args, show_model_help
from mnist_lightning.data import MAX_SEED, MNISTDataModule, default_data_dir
from mnist_lightning.errors import ConfigError
from mnist_lightning.evaluation.ensemble import expand_checkpoints

# stands in for "no model given" while the command line is first parsed: the checkpoint may supply the model
MODEL_PLACEHOLDER = {"class_path": "mnist_lightning.models.base.MNISTClassifier"}
# ckpt_path values that Lightning resolves itself, not files to read here
LIGHTNING_CKPT_PATHS = ("best", "hpc")


@dataclass
class ParsedArguments:
    """The parsed configuration, and the checkpoint whose settings it was parsed with (if any)."""

    config: Namespace
    checkpoint: CheckpointInfo | None = None
    # the checkpoint's contents, kept until the built model has been checked against its weights
    checkpoint_state: dict[str, Any] | None = None


def section_of(config: Namespace, subcommand: str | None) -> Namespace:
    """The part of ``config`` that holds the settings: the subcommand's, or all of it without subcommands."""
    return config[subcommand] if subcommand else config


def parse_with_checkpoint(parser: LightningArgumentParser, args: Any, subcommands: Sequence[str]) -> ParsedArguments:
    """Parse ``args`` (a list, None for ``sys.argv``, or a dict/Namespace) with the checkpoint's settings as defaults.

    ``subcommands`` are the parser's subcommands (none when the CLI is built with ``run=False``).
    """
    parse, first_parse = parse_functions(parser, args)
    prefixes = [f"{name}." for name in subcommands] or [""]
    parser.set_defaults({f"{prefix}model": MODEL_PLACEHOLDER for prefix in prefixes})
    config, complete = first_parse()
    subcommand = config.get("subcommand")
    prefix = f"{subcommand}." if subcommand else ""
    section = section_of(config, subcommand)
    follow_root_dir(section)
    user_model = None if is_placeholder(section.get("model")) else section.model

    ckpt_path = chosen_checkpoint(section, subcommand)
    parsed = ParsedArguments(config)
    defaults: dict[str, Any] = {f"{p}model": None for p in prefixes}
    if ckpt_path and ckpt_path not in LIGHTNING_CKPT_PATHS and not str(ckpt_path).startswith("registry:"):
        parsed.checkpoint_state = read_checkpoint(ckpt_path)
        parsed.checkpoint = inspect_checkpoint(ckpt_path, parsed.checkpoint_state)
        defaults.update(checkpoint_defaults(parsed.checkpoint, user_model, prefix))
        defaults.update(trained_data_dir_default(parsed.checkpoint, section, prefix))
    parser.set_defaults(defaults)
    if parsed.checkpoint is not None or user_model is None or not complete:
        config = parse()  # a missing model is now the parser's own "required" error
    section = section_of(config, subcommand)
    follow_root_dir(section)
    check_seed(section.get("seed_everything"))
    if ckpt_path != section.get("ckpt_path"):
        section.ckpt_path = ckpt_path
    if parsed.checkpoint is not None and parsed.checkpoint.wandb_run_id:
        continue_wandb_run(section, parsed.checkpoint.wandb_run_id, resume=subcommand != "fit", job_type=subcommand)
    parsed.config = config
    return parsed


def check_seed(seed: Any) -> None:
    """Refuse a seed that Lightning's ``seed_everything`` would refuse with a traceback (out of numpy's range)."""
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed_everything expects {EXPECTED['seed_everything']}; got {seed}")


def parse_functions(
    parser: LightningArgumentParser, args: Any
) -> tuple[Callable[[], Namespace], Callable[[], tuple[Namespace, bool]]]:
    """The full parse of ``args``, and the first one (which returns whether it parsed everything, too)."""
    if isinstance(args, (dict, Namespace)):

        def parse() -> Namespace:
            return parser.parse_object(args)

        return parse, lambda: (parse(), True)
    argv = show_model_help(resolve_preset_args(sys.argv[1:] if args is None else list(args)))
    return lambda: parser.parse_args(argv), lambda: parse_without_model_settings(parser, argv)


def chosen_checkpoint(section: Namespace, subcommand: str | None) -> str | None:
    """The checkpoint whose settings are the defaults: ``--ckpt_path`` (``last`` resolved), else ``--ensemble``'s
    first (an ensemble's model and data settings are those of its first member, as ``ckpt_path``'s are)."""
    ckpt_path = section.get("ckpt_path")
    if not ckpt_path and section.get("ensemble"):
        ckpt_path = str(expand_checkpoints(section.ensemble)[0])
    if ckpt_path == "last":
        ckpt_path = resolve_last_checkpoint(section, subcommand)
    return ckpt_path


def resolve_last_checkpoint(section: Namespace, subcommand: str | None) -> str | None:
    """``--ckpt_path last``: the newest ``last.ckpt`` under the folders this run would write to. ``fit`` without one
    starts a new run; every other command needs one."""
    roots = search_roots(section)
    if subcommand != "fit":
        return str(resolve_last(roots, "pass a .ckpt path, or the run's root with --trainer.default_root_dir"))
    found = find_last(*roots)
    if found is None:
        print(f"No last.ckpt under {searched(roots)}: starting a new run", file=sys.stderr)
        return None
    print(f"Resuming from {found}", file=sys.stderr)
    return str(found)


def search_roots(section: Namespace) -> list[Path]:
    """Where ``--ckpt_path last`` looks: the checkpoint folder if given, else the root (and a logger's own folder)."""
    if section.get("checkpoint.dirpath"):
        return [Path(section.get("checkpoint.dirpath"))]
    return [Path(section.get("trainer.default_root_dir") or "."), *logger_folders(section)]


def checkpoint_defaults(info: CheckpointInfo, user_model: Namespace | None, prefix: str) -> dict[str, Any]:
    """The checkpoint's data settings, and its model unless the user gave another class, as parser defaults."""
    check_data_settings(info, inspect.signature(MNISTDataModule.__init__).parameters)
    defaults: dict[str, Any] = {f"{prefix}data.{key}": value for key, value in info.data_settings.items()}
    trusted = [user_model.class_path] if user_model is not None else []
    if user_model is None or same_class(user_model.class_path, info.class_path):
        check_settings(info, classifier_class(info, trusted))
        defaults[f"{prefix}model"] = {"class_path": info.class_path, "init_args": info.model_settings}
    return defaults


def trained_data_dir_default(info: CheckpointInfo, section: Namespace, prefix: str) -> dict[str, Any]:
    """The data folder the checkpoint was trained on as the ``data.data_dir`` default while it still holds MNIST (see
    :func:`~mnist_lightning.checkpoints.data_dir_to_evaluate`); a folder the user gave (command line or config file:
    the first parse has it) still wins, and it beats ``$MNIST_LIGHTNING_DATA_DIR``, which is a default for every
    command while the checkpoint names the data this model was trained on. Either way one line says so on stderr."""
    if section.get("data.data_dir") or not info.trained_data_dir or section.get("data.predict_images"):
        return {}  # the user's folder, no folder recorded, or predict on image files (no MNIST read)
    folder = data_dir_to_evaluate(info)
    if folder is None:
        print(
            f"{PROG}: the checkpoint was trained on MNIST in {info.trained_data_dir}, which no longer holds it: "
            f"reading {default_data_dir()} instead (--data.data_dir DIR to choose)",
            file=sys.stderr,
        )
        return {}
    if Path(folder).absolute() != default_data_dir().absolute():
        print(
            f"{PROG}: reading MNIST from {folder}, the folder the checkpoint was trained on "
            "(--data.data_dir DIR to choose another)",
            file=sys.stderr,
        )
    return {f"{prefix}data.data_dir": folder}


def parse_without_model_settings(parser: LightningArgumentParser, argv: list[str]) -> tuple[Namespace, bool]:
    """The first parse, which only has to find ``ckpt_path`` and the folders. Settings of the checkpoint's model
    without a ``--model`` (``--model.dropout 0.2``) cannot be parsed before the checkpoint names the class: they are
    left out of this parse only (the flag returned is False then), and the second parse takes them (or reports
    them)."""
    reduced = drop_model_settings(argv)
    if reduced != argv and not any(a == "--model" or a.startswith("--model=") for a in argv):
        OneLineErrorParser.tentative = True
        try:
            return parser.parse_args(reduced), False
        except TentativeParseError:
            pass  # reported by the full parse below
        finally:
            OneLineErrorParser.tentative = False
    return parser.parse_args(argv), True


def drop_model_settings(argv: list[str]) -> list[str]:
    """``argv`` without ``--model.KEY VALUE`` and ``--model.KEY=VALUE`` (the model's own settings)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("--model."):
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def is_placeholder(model: Any) -> bool:
    """Whether ``model`` is no model, or the :data:`MODEL_PLACEHOLDER` the first parse was given."""
    return model is None or str(getattr(model, "class_path", "")).rsplit(".", 1)[-1] == "MNISTClassifier"


def same_class(a: str, b: str) -> bool:
    """Two class paths of the same class (jsonargparse shortens paths: ``mnist_lightning.MLPClassifier``)."""
    known = known_class_paths()
    return a == b or (a in known and known[a] is known.get(b))
