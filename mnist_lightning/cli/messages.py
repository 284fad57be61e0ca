"""What the command says when something is wrong, and what library chatter it keeps quiet.

Argument errors of both parsers (LightningCLI's jsonargparse and the extra commands' argparse) become one line,
``mnist-lightning: error: ...``, with exit code 2; the full jsonargparse report is still there with
``MNIST_LIGHTNING_DEBUG=1``. Warnings and log lines that say nothing a user can act on are filtered here, once.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from mnist_lightning.checkpoints import classifier_classes
from mnist_lightning.data import MAX_SEED
from mnist_lightning.errors import DEBUG_ENV

PROG = "mnist-lightning"


def error_line(message: str, see: str | None = None) -> str:
    """``mnist-lightning: error: MESSAGE`` (``; see 'SEE --help'`` when a help page would tell more)."""
    return f"{PROG}: error: {message}" + (f"; see '{see} --help'" if see else "")


class TentativeParseError(Exception):
    """A first parse failed; the caller decides whether that is the user's error."""


class OneLineErrorParser(LightningArgumentParser):
    """Argument errors as one line (the full jsonargparse report with ``MNIST_LIGHTNING_DEBUG=1``)."""

    # set while a first, tentative parse runs (see cli/parsing.py): errors are raised to it, not printed
    tentative = False

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if OneLineErrorParser.tentative:
            raise TentativeParseError(message)
        if os.environ.get(DEBUG_ENV) or not self.exit_on_error:
            super().error(message, ex)
        print(error_line(summarize_parse_error(message), see=PROG), file=sys.stderr)
        sys.exit(2)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse (the extra commands) with the same error style: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(error_line(message, see=self.prog), file=sys.stderr)
        sys.exit(2)


# what a setting takes, in words, where jsonargparse's type names would mislead ("Expected a <class 'bool'>" for a
# seed): LightningCLI types seed_everything as bool | int, and seed_everything() takes 0 to MAX_SEED (2**32 - 1)
EXPECTED = {"seed_everything": f"an integer from 0 to {MAX_SEED} (or true for a random seed, false for none)"}
TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text", "NoneType": "null"}
CHOICE = "one of "
SIMPLE_TYPE = re.compile(r"<class '(\w+)'>")


def summarize_parse_error(message: str) -> str:
    """The gist of a (possibly nested, many-line) jsonargparse error, in one line."""
    # jsonargparse lists reasons as "  - reason"; only that bullet goes, not the dashes of an option (--ckpt_path)
    lines = [re.sub(r"^-\s+", "", line.strip()).strip() for line in message.strip().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return message
    unknown = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("Expected a dot import path")), None
    )
    keys = [i for i, line in enumerate(lines) if line.startswith("Parser key") and line.endswith(":")]
    if unknown is not None:
        key = setting_name(lines, keys) if keys else "model"
        if key == "model":
            names = ", ".join(cls.__name__ for cls in classifier_classes())
            return f"unknown model {unknown!r}; choose one of {names} (or a full class path)"
        return f"{key}: no class {unknown!r}; give a class name Lightning knows or a full class path (package.Class)"
    expected = expected_value(lines, keys) if keys else None
    if expected is not None:
        return expected
    if keys and keys[-1] + 1 < len(lines) and (keys[-1] > 0 or "Errors:" not in lines):
        return f"{lines[keys[-1]]} {lines[keys[-1] + 1]}"
    if "Errors:" in lines:
        skip = ("Expected a <class 'NoneType'>", "Given value", "Subtypes:")
        reasons = [line for line in lines[lines.index("Errors:") + 1 :] if not line.startswith(skip)]
        if reasons:
            return f"{lines[0]} {reasons[0]}" if lines[0].startswith("Parser key") else reasons[0]
    return lines[0]


def expected_value(lines: list[str], keys: list[int]) -> str | None:
    """``KEY expects WHAT; got 'VALUE'`` for a value of the wrong plain type (int, float, bool, a choice), naming
    every type the setting takes (jsonargparse's first reason names one: "Expected a <class 'bool'>" for a seed);
    None for other errors. ``keys`` are the lines ``Parser key "...":``, outermost first (a model's own setting is
    nested in ``model``)."""
    key = setting_name(lines, keys)
    rest = lines[keys[-1] + 1 :]
    direct = re.match(r"Expected a <class '(\w+)'>\. Got value: (.*)", rest[0]) if rest else None
    if direct is not None:
        kinds, given = [TYPE_WORDS.get(direct.group(1))], direct.group(2)
    else:
        subtypes = next((line.removeprefix("Subtypes:") for line in rest if line.startswith("Subtypes:")), "")
        given = next((line.removeprefix("Given value: ") for line in rest if line.startswith("Given value:")), None)
        kinds = [type_words(part) for part in split_subtypes(subtypes)]
    if given is None or not kinds or None in kinds:
        return None  # a class, or a type without words here: jsonargparse's own reason says more
    # the choices of several Literals (trainer.precision has three) as one list
    choices = [c for k in kinds if k.startswith(CHOICE) for c in k.removeprefix(CHOICE).split(", ")]
    kinds = [k for k in kinds if not k.startswith(CHOICE)] + (
        [CHOICE + ", ".join(dict.fromkeys(choices))] if choices else []
    )
    words = EXPECTED.get(key) or " or ".join(dict.fromkeys(k for k in kinds if k != "null")) or "null"
    return f"{key} expects {words}; got {given!r}"


def setting_name(lines: list[str], keys: list[int]) -> str:
    """The setting an error is about, as a user writes it (``model.lr``), from its ``Parser key`` lines."""
    names = [lines[i].removeprefix("Parser key").strip().rstrip(":").strip().strip('"') for i in keys]
    if names[0] in LightningCLI.subcommands():
        names = names[1:] or names
    return ".".join(names)


def split_subtypes(subtypes: str) -> list[str]:
    """``[<class 'int'>, typing.Literal['a', 'b']]`` → ``["<class 'int'>", "typing.Literal['a', 'b']"]``."""
    parts, depth, current = [], 0, ""
    for char in subtypes.strip()[1:-1]:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def type_words(subtype: str) -> str | None:
    """One subtype in words (``an integer``, ``one of 16-true, bf16-mixed``), or None for a class."""
    simple = SIMPLE_TYPE.fullmatch(subtype)
    if simple is not None:
        return TYPE_WORDS.get(simple.group(1))
    choices = re.fullmatch(r"typing\.Literal\[(.*)\]", subtype)
    if choices is not None:
        return CHOICE + ", ".join(choice.strip().strip("'\"") for choice in choices.group(1).split(","))
    return None


class HideAdvertisement(logging.Filter):
    """Drops Lightning's start-up tip that advertises another logging service: it says nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


def quiet_library_noise() -> None:
    """Filter the warnings and log lines of Lightning that are noise for this project's runs."""
    # batch indices are not needed: predictions come back in the order of the (unshuffled) split
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    # every epoch's metrics are logged at its end whatever log_every_n_steps says: on short runs this tip is noise
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, HideAdvertisement) for f in rank_zero.filters):
        rank_zero.addFilter(HideAdvertisement())
