"""The ``mnist-lightning`` console command: the one table of its commands, and ``main``.

LightningCLI parses and runs its own subcommands (fit, validate, test, predict); the others (serve, export, tune,
report) are argparse commands. :data:`COMMANDS` says which is which, and both the dispatch in :func:`main` and the
argparse parser are built from it. Every user error ends as one line on stderr with a conventional exit code.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning import interrupts, tuning
from mnist_lightning.callbacks import interrupted_by
from mnist_lightning.cli import commands
from mnist_lightning.cli.lightning_cli import MNISTLightningCLI
from mnist_lightning.cli.messages import PROG, OneLineArgumentParser, error_line, summarize_parse_error
from mnist_lightning.errors import DEBUG_ENV, user_error


@dataclass(frozen=True)
class Command:
    """What parses and runs a command: LightningCLI (no parser or runner here), or an argparse parser and a runner."""

    add_parser: Callable[[Any], argparse.ArgumentParser] | None = None  # adds its parser to argparse's subparsers
    run: Callable[[argparse.Namespace], None] | None = None
    summary: str = ""  # for the list of commands at the end of 'mnist-lightning --help'

    @property
    def by_lightning(self) -> bool:
        return self.run is None


COMMANDS: dict[str, Command] = {
    **dict.fromkeys(MNISTLightningCLI.subcommands(), Command()),  # fit, validate, test, predict
    "serve": Command(commands.add_serve_parser, commands.run_serve, "a page to draw digits"),
    "export": Command(commands.add_export_parser, commands.run_export, "ONNX, TorchScript"),
    "tune": Command(tuning.add_tune_parser, tuning.run_tune_command, "hyperparameter search, Optuna"),
    "report": Command(commands.add_report_parser, commands.run_report, "metrics, calibration, shifts"),
}
ARGPARSE_COMMANDS = [name for name, command in COMMANDS.items() if not command.by_lightning]


def skip_teardown_collection() -> None:
    """At exit: collect the run's garbage once, then freeze every object so that the interpreter's own teardown
    collections skip them. Measured on the 2-core VM: after a short ``fit`` those collections took 2.8-3.7 s of
    tearing down torch, Lightning and their imports (472,000 objects), against 0.7 s for this collection; the
    process's memory goes back to the OS either way. Registered at import, so it runs after the ``atexit``
    handlers registered later (wandb's)."""
    gc.collect()
    gc.freeze()


atexit.register(skip_teardown_collection)


def argparse_parser() -> argparse.ArgumentParser:
    """The parser of the commands LightningCLI does not know."""
    parser = OneLineArgumentParser(prog=PROG)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    for name in ARGPARSE_COMMANDS:
        COMMANDS[name].add_parser(subparsers)
    return parser


def help_epilog() -> str:
    """The end of ``mnist-lightning --help``: the commands that are not LightningCLI's."""
    listed = ", ".join(f"{name} ({COMMANDS[name].summary})" for name in ARGPARSE_COMMANDS)
    first, *others = ARGPARSE_COMMANDS
    return f"more commands: {listed}; see '{PROG} {first} --help' (and {', '.join(others)})"


def main(args: list[str] | None = None) -> None:
    """Console entry point; user errors end with one line on stderr and exit code 1 (traceback with DEBUG)."""
    argv = sys.argv[1:] if args is None else args
    command = COMMANDS.get(argv[0]) if argv else None
    by_lightning = command is None or command.by_lightning
    if by_lightning:
        interrupts.listen()  # Ctrl+C and SIGTERM at any moment: see mnist_lightning.interrupts
    else:
        interrupts.end_startup_guard()
    try:
        if not by_lightning:
            options = argparse_parser().parse_args(argv)
            COMMANDS[options.command].run(options)
        else:
            MNISTLightningCLI(args=args, epilog=help_epilog())
    except (SIGTERMException, KeyboardInterrupt) as stop:
        signum = signal.SIGTERM if isinstance(stop, SIGTERMException) else signal.SIGINT
        if by_lightning:  # one line, unless the checkpoint callback has said where the state was saved
            interrupts.exit_interrupted(signum)
        sys.exit(128 + signum)
    except SystemExit as exit_:
        # Lightning ends a run stopped by Ctrl+C with exit code 1; the shell convention is 128 + SIGINT
        stopped_by = interrupts.received() or (signal.SIGINT if interrupted_by() == signal.SIGINT else None)
        if stopped_by is not None and exit_.code not in (0, None):
            if by_lightning:
                interrupts.exit_interrupted(stopped_by)
            sys.exit(128 + stopped_by)
        raise
    except Exception as err:
        cause = user_error(err)
        if cause is None or os.environ.get(DEBUG_ENV):
            raise
        print(error_line(summarize_parse_error(str(cause))), file=sys.stderr)
        sys.exit(1)
    finally:
        interrupts.command_finished()
