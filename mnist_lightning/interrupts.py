"""Ctrl+C (SIGINT) and SIGTERM in the ``mnist-lightning`` command, from its first import until it exits.

The policy, phase by phase:

- **starting** (importing torch and Lightning, ~10 s on a busy machine; :func:`guard_startup`, installed by the
  package's ``__init__`` only when the console command runs): one line, exit 130 (Ctrl+C) or 143 (SIGTERM), no
  traceback; nothing has been written yet.
- **running** (:func:`listen`, from ``main``): the signal is raised at once as ``KeyboardInterrupt`` or Lightning's
  ``SIGTERMException``; ``main`` prints one line and exits 130 or 143. A fit's checkpoint callback saves
  ``last.ckpt`` on the way out when at least one step was trained.
- **training** (a single-process fit, between ``on_train_start`` and ``on_train_end``; :func:`defer`): the
  signal is noted and the fit stops at the next safe point (:func:`stop_if_requested`: after an optimizer step or
  a validation batch), so the saved state is that of a whole step. Should no safe point come within
  :data:`GRACE_SECONDS` (a long figure, a slow save) the signal is raised where the program is; a second signal
  is raised at once.
- **saved** (:func:`state_saved`, on the way out after an interruption, ``last.ckpt`` written when there was
  something to save): a further signal ends the process at once (``os._exit``), without waiting for W&B to
  finish its files.

The console command listens to SIGINT even when it inherited it ignored (a background job of a non-interactive
shell): ``kill -INT`` and ``timeout -s INT`` then stop a fit cleanly rather than not at all.

This module imports only the standard library: it runs before torch is imported.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

PROG = "mnist-lightning"
# how long a fit may take to reach a safe point after a signal before it is stopped where it is: a training step
# of the presets takes well under a second on a CPU, drawing a validation figure a second or two
GRACE_SECONDS = 5.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl+C", signal.SIGTERM: "SIGTERM"}


class _State:
    def __init__(self) -> None:
        self.phase = "idle"  # idle, starting, running, training, saved
        self.received: list[int] = []
        self.pending: int | None = None
        self.reported = False  # the one line about the stop was printed
        self.timer: threading.Timer | None = None
        self.before_startup: dict[int, Any] = {}


_state = _State()


def is_console_command() -> bool:
    """True when this process is the ``mnist-lightning`` console script."""
    return bool(sys.argv) and Path(sys.argv[0]).name.removesuffix(".exe") == PROG


def guard_startup() -> None:
    """While the console command imports its libraries: a signal ends it with one line and 130 or 143."""
    if _state.phase != "idle" or threading.current_thread() is not threading.main_thread():
        return
    _state.before_startup = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _state.phase = "starting"
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


class _QuietShutdownLines(logging.Filter):
    """Drops Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown" and "Received SIGTERM" lines:
    the command says in one line how it stopped and what it saved."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return "Detected KeyboardInterrupt" not in message and "Received SIGTERM" not in message


# the loggers of Lightning's rank_zero_info and of its SIGTERM handler
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.signal_connector")


def listen() -> None:
    """The console command's handlers for SIGINT and SIGTERM, from here until the process ends."""
    _cancel_timer()
    _state.__init__()  # type: ignore[misc]  # main() may run several times in one process (the tests)
    _state.phase = "running"
    for name in LIGHTNING_LOGGERS:
        lightning_log = logging.getLogger(name)
        if not any(isinstance(f, _QuietShutdownLines) for f in lightning_log.filters):
            lightning_log.addFilter(_QuietShutdownLines())
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _on_signal)


def command_finished() -> None:
    """``main`` returns: the handlers stay (a signal now is raised at once), except after a save on the way out,
    where a further signal still ends the process without waiting for W&B."""
    disarm()
    if _state.phase != "saved":
        _state.phase = "idle"


def end_startup_guard() -> None:
    """Commands that handle signals their own way get back the handlers that were there before the guard."""
    for signum, handler in _state.before_startup.items():
        if signal.getsignal(signum) is _on_signal and handler is not None:
            signal.signal(signum, handler)
    _state.__init__()  # type: ignore[misc]


def received() -> int | None:
    """The last signal the command received (SIGINT or SIGTERM), or None."""
    return _state.received[-1] if _state.received else None


def defer() -> None:
    """A single-process fit's training loop is running: stop it at its next safe point.

    Lightning's own SIGTERM handler (installed when its fit starts) stops after whichever batch ends next, also in
    the middle of a gradient accumulation: this one takes SIGTERM back so that it waits for the optimizer step too
    (Lightning puts its predecessor back at the end of the fit)."""
    if _state.phase == "running":
        _state.phase = "training"
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_signal)


def stop_deferring() -> None:
    """The training loop is over: a signal noted but not acted on yet is raised now."""
    if _state.phase == "training":
        _state.phase = "running"
        stop_if_requested()


def stop_if_requested() -> None:
    """A safe point of training: raise the signal received since the last one, if any."""
    signum = _state.pending
    if signum is None:
        return
    disarm()
    raise interruption(signum)


def disarm() -> None:
    """The fit is stopping for another reason (or for this one): nothing more to raise."""
    _cancel_timer()
    _state.pending = None
    if _state.phase == "training":
        _state.phase = "running"


def state_saved() -> None:
    """The command is on its way out, ``last.ckpt`` written if there was anything to save: a further signal ends
    the process at once. Lightning ignores Ctrl+C while it shuts a fit down; it is listened to again here."""
    if _state.phase not in ("running", "training"):  # not the console command's fit (a Trainer in a notebook or a
        return  # test): the handlers stay as they are
    _state.phase = "saved"
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)


def report(line: str) -> None:
    """Print the one line saying how the command stopped (once)."""
    if not _state.reported:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)
        _state.reported = True


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number."""
    return 128 + int(signum)


def exit_interrupted(signum: int) -> None:
    """End the command stopped by ``signum``; one line unless the checkpoint callback already said where it saved."""
    disarm()
    report(f"stopped by {NAMES.get(signum, signal.Signals(signum).name)}; no checkpoint was written")
    sys.exit(exit_code(signum))


def interruption(signum: int) -> BaseException:
    """The exception a signal becomes: ``KeyboardInterrupt`` for Ctrl+C, Lightning's ``SIGTERMException`` (a
    ``SystemExit``, which Lightning's loops and the tune command know) for SIGTERM."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    if "lightning.pytorch" in sys.modules:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        return SIGTERMException()
    return SystemExit(exit_code(signum))


def _cancel_timer() -> None:
    if _state.timer is not None:
        _state.timer.cancel()
        _state.timer = None


def _raise_in_main_thread(signum: int) -> None:
    # a real signal to the main thread also ends a blocking system call there (a simulated one would wait for it)
    if _state.pending == signum and _state.phase == "training":
        signal.pthread_kill(threading.main_thread().ident or 0, signum)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    phase = _state.phase
    if phase == "starting":
        report(f"stopped by {NAMES[signum]} while starting; nothing was written")
        raise SystemExit(exit_code(signum))
    if phase == "saved":
        print(f"{PROG}: stopped by {NAMES[signum]} again; exiting without waiting for W&B", file=sys.stderr, flush=True)
        os._exit(exit_code(signum))
    if _state.pending is None:
        _state.received.append(signum)
    if phase == "training" and _state.pending is None:
        _state.pending = signum
        _state.timer = threading.Timer(GRACE_SECONDS, _raise_in_main_thread, args=(signum,))
        _state.timer.daemon = True
        _state.timer.start()
        return
    # a second signal, the grace period over, or not training: stop here
    disarm()
    raise interruption(signum)
