"""What the command says when something is wrong, and what library chatter it keeps quiet.

Argument errors of both parsers (LightningCLI's jsonargparse and the extra commands' argparse) become one line,
``mnist-lightning: error: ...``, with exit code 2; the full jsonargparse report is still there with
``MNIST_LIGHTNING_DEBUG=1``. Warnings and log lines that say nothing a user can act on are filtered here, once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from mnist_lightning.checkpoints import classifier_classes
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


def summarize_parse_error(message: str) -> str:
    """The gist of a (possibly nested, many-line) jsonargparse error, in one line."""
    lines = [line.strip().lstrip("- ").strip() for line in message.strip().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return message
    unknown = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("Expected a dot import path")), None
    )
    if unknown is not None:
        names = ", ".join(cls.__name__ for cls in classifier_classes())
        return f"unknown model {unknown!r}; choose one of {names} (or a full class path)"
    keys = [i for i, line in enumerate(lines) if line.startswith("Parser key") and line.endswith(":")]
    if keys and keys[-1] + 1 < len(lines) and (keys[-1] > 0 or "Errors:" not in lines):
        return f"{lines[keys[-1]]} {lines[keys[-1] + 1]}"
    if "Errors:" in lines:
        skip = ("Expected a <class 'NoneType'>", "Given value", "Subtypes:")
        reasons = [line for line in lines[lines.index("Errors:") + 1 :] if not line.startswith(skip)]
        if reasons:
            return f"{lines[0]} {reasons[0]}" if lines[0].startswith("Parser key") else reasons[0]
    return lines[0]


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
