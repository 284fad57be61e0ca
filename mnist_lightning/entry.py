"""The ``mnist-lightning`` console script: LightningCLI's subcommands (fit, validate, test, predict) and the extra
commands (serve, export, tune, report), with one line and a conventional exit code for every user error.

It sits above :mod:`mnist_lightning.cli` and :mod:`mnist_lightning.commands`, so that neither imports the other.
"""

from __future__ import annotations

import os
import signal
import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning.callbacks import interrupted_by
from mnist_lightning.cli import DEBUG_ENV, MNISTLightningCLI, summarize_parse_error, user_error

EXTRA_COMMANDS = ("serve", "export", "tune", "report")


def main(args: list[str] | None = None) -> None:
    """Console entry point; user errors end with one line on stderr and exit code 1 (traceback with DEBUG)."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in EXTRA_COMMANDS:  # not LightningCLI subcommands: see commands.py
            from mnist_lightning.commands import run_extra_command

            run_extra_command(argv)
        else:
            MNISTLightningCLI(args=args)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)  # the checkpoint callback has said where the state was saved
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except SystemExit as exit_:
        # Lightning ends a run stopped by Ctrl+C with exit code 1; the shell convention is 128 + SIGINT
        if interrupted_by() == signal.SIGINT and exit_.code not in (0, None):
            sys.exit(128 + signal.SIGINT)
        raise
    except Exception as err:
        cause = user_error(err)
        if cause is None or os.environ.get(DEBUG_ENV):
            raise
        print(f"mnist-lightning: error: {summarize_parse_error(str(cause))}", file=sys.stderr)
        sys.exit(1)
