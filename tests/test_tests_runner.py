"""The tests' in-process runner (``run_cli``): it shows what the console script shows, exits as a process exits,
and leaves the test process as it found it."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import wandb
from conftest import CONFIGS, PACKAGE_WARNING_FILTERS, run_cli, run_console_script
from in_process import SIGNALS, run_in_process

TINY = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")


def test_the_runner_shows_what_the_console_script_shows(isolated: Path) -> None:
    # (not --help: jsonargparse lists the subclasses of the model's base class there, and in the test process those
    # include the tests' own models)
    commands = (
        ["fit", "--model", "MLPClassifier", "--model.lr", "-1"],
        ["fit", "--model", "MLPClassifier", "--print_config"],
    )
    for args in commands:
        here, there = run_cli(*args, check=False), run_console_script(*args, check=False)
        assert (here.returncode, here.stdout) == (there.returncode, there.stdout), args
        # the same lines, in the same order (a new process may also show a library's warnings when it imports it)
        mine, its = here.stderr.splitlines(), there.stderr.splitlines()
        assert [line for line in its if line in mine] == mine, (mine, its)
        assert here.returncode == 0 or "mnist-lightning: error: lr must be positive" in here.stderr


def test_a_command_leaves_the_test_process_as_it_found_it(isolated: Path) -> None:
    environ, argv, cwd = dict(os.environ), list(sys.argv), os.getcwd()
    handlers = {number: signal.getsignal(number) for number in SIGNALS}
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    deterministic = torch.are_deterministic_algorithms_enabled()
    # a W&B run (offline), a seeded deterministic fit: wandb's service, PL_GLOBAL_SEED, torch's deterministic mode
    fit = ("fit", "--config", str(CONFIGS / "linear.yaml"), *TINY, "--trainer.deterministic", "true")
    result = run_cli(*fit)
    assert "W&B: offline run saved" in result.stderr
    assert wandb.run is None and os.environ == environ and sys.argv == argv and os.getcwd() == cwd
    assert {number: signal.getsignal(number) for number in SIGNALS} == handlers
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    # and the run it trained can be continued in this process: its folder's lock was let go
    run_cli(*fit, "--trainer.max_epochs", "2", "--ckpt_path", "last")


def test_exit_codes_are_those_of_a_process() -> None:
    def fails() -> None:
        raise ZeroDivisionError("a bug")

    def exits(code: object) -> Callable[[], None]:
        return lambda: sys.exit(code)

    crashed = run_in_process(fails, ["mnist-lightning"], PACKAGE_WARNING_FILTERS)
    assert crashed.returncode == 1 and "Traceback" in crashed.stderr and "ZeroDivisionError: a bug" in crashed.stderr
    assert run_in_process(exits(None), ["x"], []).returncode == 0
    assert run_in_process(exits(3), ["x"], []).returncode == 3
    message = run_in_process(exits("bye"), ["x"], [])
    assert message.returncode == 1 and message.stderr == "bye\n"


def test_warnings_are_shown_as_a_new_process_shows_them() -> None:
    def warns() -> None:
        for _ in range(2):
            warnings.warn("shown once per place", UserWarning, stacklevel=1)
        warnings.warn("hidden by default", DeprecationWarning, stacklevel=1)
        warnings.warn("the step is smaller than the logging interval", UserWarning, stacklevel=1)  # the package's

    for _ in range(2):  # the second command shows it again: it is another process
        shown = run_in_process(warns, ["x"], PACKAGE_WARNING_FILTERS).stderr
        assert shown.count("UserWarning: shown once per place") == 1
        assert "hidden by default" not in shown and "logging interval" not in shown
