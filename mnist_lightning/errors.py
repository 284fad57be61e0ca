"""The errors a user can cause. ``mnist-lightning`` turns every one of them into one line on stderr.

Anything else that escapes a command is a bug and keeps its traceback: :func:`user_error` tells the two apart, also
when a library wrapped the user error in its own exception, and ``MNIST_LIGHTNING_DEBUG=1`` shows every traceback.
Each class also derives from the built-in exception that Python code calling the package would expect
(``ValueError``, ``OSError``), so ``except ValueError`` around, say, ``MLPClassifier(lr=-1)`` keeps working.
"""

from __future__ import annotations

# set (to anything) to see the full library error and its traceback instead of the one line
DEBUG_ENV = "MNIST_LIGHTNING_DEBUG"


class MNISTLightningError(Exception):
    """Base class of every error that a user's input or environment causes (not a bug): one line, no traceback."""


class ConfigError(MNISTLightningError, ValueError):
    """A setting that is out of range or does not fit the others; the message names it and a value that works."""


class CheckpointError(MNISTLightningError, ValueError):
    """A checkpoint that is missing, unreadable, not an mnist-lightning checkpoint, or does not fit the model."""


class OutputPathError(MNISTLightningError, OSError):
    """An output file or folder that cannot be written (read-only, a file in the way, a full disk, ...)."""


def one_line(message: BaseException | str, limit: int = 400) -> str:
    """A library's (possibly many-line) message as one line: its first two non-empty lines, white space folded."""
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    return " ".join(" ".join(lines[:2]).split())[:limit] if lines else str(message)


def innermost(err: BaseException) -> BaseException:
    """The exception at the bottom of a chain of ``raise ... from ...``."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def user_error(err: BaseException) -> MNISTLightningError | None:
    """The user error behind ``err``: itself, or the one a library wrapped (jsonargparse wraps what a class raises
    while it is instantiated in its own ValueError); None for anything else, which is a bug."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, MNISTLightningError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
