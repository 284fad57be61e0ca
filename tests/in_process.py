"""Running the console command inside the test process as if it were a new process, and putting back afterwards
whatever a command (or a test) changed of this process's global state.

A command run in a fresh process starts from a clean slate and leaves nothing behind; in the test process the same
command shares the interpreter with every test before and after it. What differs, and how it is made the same:

- output: Lightning's log handler and some libraries hold the stream that was ``sys.stderr`` when they were
  imported, and child processes (wandb's service) write to the file descriptors; so both ``sys.stdout``/``sys.stderr``
  and file descriptors 1 and 2 point at temporary files while the command runs, and the handlers are pointed at them;
- warnings: pytest records warnings instead of printing them and adds its own filters; a command sees Python's
  default filters plus those the package set when it was imported, and its warnings are printed to its stderr
  (each once per place, as in a new process);
- state a command leaves: environment variables (wandb's ``WANDB_SERVICE``, Lightning's ``PL_GLOBAL_SEED``), an
  open W&B run and wandb's service (ended as a process exit ends them), signal handlers, torch's global settings
  and random states, logging levels/handlers/filters (wandb leaves its run's log file attached), ``sys.argv``, the
  working folder, ``sys.path``, modules imported from a temporary folder, Lightning's once-per-process warning
  caches, and the ``flock`` of a run folder (a process's locks end with it; a command in this process must let go).

What stays different: modules already imported are not imported again (a library's import-time warnings show in a
new process only), and classes the tests define are known to the command (jsonargparse's ``--help`` lists the tests'
subclasses of the package's model classes among the choices).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import traceback
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import WarningCache

# the filters of a fresh process started without -W or PYTHONWARNINGS (see the warnings module's documentation)
PYTHON_DEFAULT_FILTERS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
]
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCHLD]
INSTALLED = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
REPO = str(Path(__file__).resolve().parents[1])
TEMPORARY = str(Path(tempfile.gettempdir()).resolve())


def _process_warnings(package_filters: list[tuple]) -> None:
    """Inside a ``warnings.catch_warnings()`` block: the filters a fresh process has, warnings printed to stderr."""
    warnings.resetwarnings()  # any change of the filters also forgets which warnings were already shown
    for action, category, module in PYTHON_DEFAULT_FILTERS:
        warnings.filterwarnings(action, category=category, module=module, append=True)
    for action, message, category, module, lineno in reversed(package_filters):
        pattern = message.pattern if message is not None else ""
        warnings.filterwarnings(action, pattern, category, module.pattern if module is not None else "", lineno)

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def _all_loggers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    found += [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    return found


class _CurrentStream:
    """Writes to whatever ``sys.<name>`` is at the time of writing (for handlers that kept an old stream)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        return getattr(sys, self.name).write(text)

    def flush(self) -> None:
        getattr(sys, self.name).flush()


@contextlib.contextmanager
def _log_handlers_to_current_streams() -> Iterator[None]:
    """Point every plain ``logging.StreamHandler`` (Lightning's, Optuna's, ...) at the current sys.stdout/stderr.

    File handlers and pytest's own capturing handlers are subclasses and are left alone."""
    swapped = []
    for logger in _all_loggers():
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _CurrentStream):
                name = "stdout" if handler.stream in (sys.stdout, sys.__stdout__) else "stderr"
                swapped.append((handler, handler.setStream(_CurrentStream(name))))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)


@contextlib.contextmanager
def _captured_output() -> Iterator[dict[str, str]]:
    """File descriptors 1 and 2 and ``sys.stdout``/``sys.stderr`` into temporary files; their text when done."""
    captured: dict[str, str] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        saved_fds = os.dup(1), os.dup(2)
        saved_streams = sys.stdout, sys.stderr
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        # stdout as a pipe would have it (block-buffered), stderr line-buffered as Python always has it
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115
        try:
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = saved_streams
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
            for name, file in (("stdout", out_file), ("stderr", err_file)):
                file.seek(0)
                text = file.read().decode("utf-8", errors="backslashreplace")
                # as a pipe read with text=True shows it: universal newlines (tqdm's carriage returns become lines)
                captured[name] = text.replace("\r\n", "\n").replace("\r", "\n")


def _forget_lightning_warning_caches() -> None:
    """Lightning keeps module-level caches of the warnings it showed once per process: a new process has none."""
    for name, module in list(sys.modules.items()):
        if name.startswith("lightning") and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, WarningCache):
                    value.clear()


def _finish_wandb(exit_code: int) -> None:
    """What the end of a process does for wandb: finish an open run with the exit code and stop wandb's service."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:  # (teardown alone would leave wandb.run set, and Lightning would reuse that run)
            wandb.run.finish(exit_code=exit_code)
        wandb.teardown(exit_code=exit_code)


def _open_files() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _release_file_locks(opened_before: set[int]) -> None:
    """What the end of a process does for its files: closing them releases their ``flock`` locks (a run folder's
    lock). Objects the command left for the garbage collector close their files; any file it opened that is still
    open keeps its descriptor but loses its lock."""
    gc.collect()
    for fd in _open_files() - opened_before:
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_UN)


class ProcessState:
    """Snapshot of the process-wide state a command or a test may change; ``restore`` (or leaving the ``with``)
    puts it back. W&B is ended as a process exit would end it."""

    def __enter__(self) -> ProcessState:
        self.environ = dict(os.environ)
        self.argv = list(sys.argv)
        self.path = list(sys.path)
        self.modules = set(sys.modules)
        self.cwd = os.getcwd()
        self.signals = {number: signal.getsignal(number) for number in SIGNALS}
        self.torch = (
            torch.get_num_threads(),
            torch.get_float32_matmul_precision(),
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
            torch.get_default_dtype(),
            torch.is_grad_enabled(),
            torch.is_anomaly_enabled(),
        )
        self.random = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        self.logging = {
            logger.name: (logger, logger.level, logger.disabled, logger.propagate, list(logger.handlers),
                          list(logger.filters))
            for logger in _all_loggers()
        }  # fmt: skip
        self.logging_disabled = logging.root.manager.disable
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self, exit_code: int = 0) -> None:
        _finish_wandb(exit_code)
        for key in set(os.environ) - set(self.environ):
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        sys.argv[:] = self.argv
        sys.path[:] = self.path
        # modules imported from a test's temporary folder (a user's model file there): a new process imports them anew
        for name in set(sys.modules) - self.modules:
            file = getattr(sys.modules.get(name), "__file__", None) or ""
            if file.startswith(TEMPORARY) and not file.startswith((*INSTALLED, REPO)):
                del sys.modules[name]
        with contextlib.suppress(FileNotFoundError):
            os.chdir(self.cwd)
        for number, handler in self.signals.items():
            if signal.getsignal(number) is not handler and handler is not None:
                signal.signal(number, handler)
        threads, precision, deterministic, warn_only, benchmark, cudnn_deterministic, dtype, grad, anomaly = self.torch
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_deterministic
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.autograd.set_detect_anomaly(anomaly)
        python_state, numpy_state, torch_state = self.random
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        for logger, level, disabled, propagate, handlers, filters in self.logging.values():
            logger.setLevel(level)
            logger.disabled, logger.propagate = disabled, propagate
            logger.handlers[:] = handlers
            logger.filters[:] = filters
        logging.disable(self.logging_disabled)


def run_in_process(
    main: Callable[[], Any], argv: list[str], package_filters: list[tuple]
) -> subprocess.CompletedProcess[str]:
    """Run ``main()`` with ``sys.argv = argv`` as a console script's process would: output, exit code, clean-up."""
    code = 0
    opened_before = _open_files()
    with ProcessState() as state, _captured_output() as output:
        sys.argv[:] = argv
        urllib.request.install_opener(None)  # a new process builds its opener (and reads the proxy settings) anew
        _forget_lightning_warning_caches()
        with warnings.catch_warnings(), _log_handlers_to_current_streams():
            _process_warnings(package_filters)
            try:
                main()
            except SystemExit as exit_:  # as the interpreter turns SystemExit into the process's exit status
                if exit_.code is None:
                    code = 0
                elif isinstance(exit_.code, int):
                    code = exit_.code
                else:
                    print(exit_.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()  # what an uncaught exception prints before the process ends with 1
                code = 1
            state.restore(exit_code=code)  # wandb's end, while the output is still captured
            _release_file_locks(opened_before)
    return subprocess.CompletedProcess(argv, code, output["stdout"], output["stderr"])
