"""Presets and config files on the command line, rewritten before jsonargparse sees them.

``--config NAME`` names a preset in ``configs/`` (``--config mlp_128_64``); every config file is checked to be
readable YAML first, so a typo gets one line naming the file (and the line and column) instead of a parser report.
``fit --model NAME --help`` becomes jsonargparse's ``--model.help NAME``, which lists that model's own options.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI

from mnist_lightning.errors import ConfigError

PACKAGE = Path(__file__).parent.parent  # mnist_lightning/
# configs/ files that are not presets: the packaged defaults, and the W&B sweep
NOT_PRESETS = ("defaults", "sweep")


def config_dir() -> Path:
    """The presets folder: packaged with a wheel install, the repository's ``configs/`` otherwise."""
    packaged = PACKAGE / "configs"
    return packaged if packaged.is_dir() else PACKAGE.parent / "configs"


def preset_names() -> list[str]:
    """The presets ``--config NAME`` accepts."""
    return sorted(p.stem for p in config_dir().glob("*.yaml") if p.stem not in NOT_PRESETS)


def resolve_preset_args(args: list[str]) -> list[str]:
    """Let ``--config NAME`` name a preset in ``configs/``; check that every config file is readable YAML.

    A config file that is nowhere, or whose YAML is broken, gets a one-line error naming the file (and the line).
    """
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            index, value, prefix = i + 1, resolved[i + 1], ""
        elif arg.startswith("--config="):
            index, value, prefix = i, arg.split("=", 1)[1], "--config="
        else:
            continue
        if is_inline(value):
            continue
        path = Path(value)
        if not path.is_file():
            candidates = (config_dir() / value, config_dir() / f"{value}.yaml")
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                raise ConfigError(
                    f"config file {value} does not exist; pass a YAML file or a preset: {', '.join(preset_names())}"
                )
            resolved[index] = prefix + str(path)
        check_yaml_file(path)
    return resolved


def check_yaml_file(path: Path) -> None:
    """Refuse a config file that cannot be read or is not YAML, naming the file, line and column."""
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path}{where}: {problem}; fix the YAML there") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None


def show_model_help(args: list[str]) -> list[str]:
    """``fit --model NAME --help`` shows that model's options (jsonargparse spells it ``--model.help NAME``)."""
    if not any(a in ("-h", "--help") for a in args):
        return args
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[1] if arg.startswith("--model=") else None
        if arg == "--model" and i + 1 < len(args):
            name = args[i + 1]
        if name and not is_inline(name):
            subcommand = next((a for a in args if a in LightningCLI.subcommands()), None)
            return [*([subcommand] if subcommand else []), "--model.help", name]
    return args


def is_inline(value: str) -> bool:
    """A value that is a YAML/JSON mapping or list written on the command line, not a file or class name."""
    return value.lstrip().startswith(("{", "["))
