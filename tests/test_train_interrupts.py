"""Ctrl+C and SIGTERM at any moment of ``fit``, sent to the real console script: while it imports its libraries,
while it starts, during the sanity check, inside a training step, during validation, while a checkpoint is being
written, while something blocks. Each ends the process by itself (the timeouts only bound a failure) with exit code
130 or 143 and one line saying what happened; ``last.ckpt`` is complete when a step was trained and absent (nothing
written) when none was; no temporary file is left behind. The moment is chosen by ``train_signal_at.SignalAt``.

Plus the rules of :mod:`mnist_lightning.interrupts` in this process: a fit stops at its next safe point, a second
signal or the end of the grace period stops it where it is."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, start_console_script, subprocess_env
from digit_helpers import python_path

from mnist_lightning import interrupts

FIT = (
    "fit", "--config", str(CONFIGS / "linear.yaml"), "--trainer.enable_progress_bar", "false",
    "--trainer.max_epochs", "50", "--trainer.limit_train_batches", "12", "--trainer.limit_val_batches", "2",
    "--checkpoint.last_every_n_train_steps", "5",
)  # fmt: skip
FAILURE_BOUND_S = 600  # only a bound for a failure: a busy machine is slow


def start(folder: Path, moment: str, sent: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    env = subprocess_env() | {"SIGNAL_AT": moment, "SIGNAL_SENT": sent, "PYTHONFAULTHANDLER": "1"}
    env["PYTHONPATH"] = python_path()
    callback = ("--trainer.callbacks+=train_signal_at.SignalAt",) if moment else ()
    return start_console_script(*FIT, *callback, *args, cwd=folder, env=env, **popen)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for the process to end by itself; on a hang, its threads' stacks in the failure."""
    try:
        _, stderr = process.communicate(timeout=FAILURE_BOUND_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER prints every thread's stack
        _, stderr = process.communicate(timeout=60)
        pytest.fail(f"still running {FAILURE_BOUND_S} s after the signal:\n{stderr[-6000:]}")
    return process.returncode, stderr


def our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mnist-lightning:")]


def check_stopped(folder: Path, code: int, stderr: str, signum: int) -> None:
    name = "Ctrl+C" if signum == signal.SIGINT else "SIGTERM"
    assert code == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = our_lines(stderr)
    assert f"stopped by {name}" in line
    assert "Detected KeyboardInterrupt" not in stderr and "Received SIGTERM" not in stderr  # one line, ours
    # nothing half-written: no temporary file of a checkpoint, config or figure anywhere
    leftovers = [p for p in folder.rglob(".*") if p.is_file() and p.name != ".lock" and ".wandb" not in p.parts]
    assert leftovers == []


def saved_last(folder: Path) -> dict:
    (last,) = folder.glob("runs/mnist-lightning/*/checkpoints/last.ckpt")
    state = torch.load(last, weights_only=True)  # complete: it loads, with weights, optimizer and loops
    assert state["state_dict"] and state["optimizer_states"] and state["loops"]
    return state


def test_ctrl_c_while_the_command_imports_its_libraries_is_one_line(isolated: Path) -> None:
    process = start(isolated, "", "SIGINT")
    # torch is imported right after the command's signal handlers are set, before anything is written
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + FAILURE_BOUND_S
    while process.poll() is None and time.monotonic() < deadline and "libtorch" not in maps.read_text():
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process)
    check_stopped(isolated, code, stderr, signal.SIGINT)
    assert not (isolated / "runs").exists()


@pytest.mark.parametrize(
    ("moment", "sent"),
    [("init", "SIGTERM"), ("setup", "SIGINT"), pytest.param("sanity", "SIGTERM", marks=pytest.mark.slow)],
    ids=str,
)
def test_a_signal_before_the_first_step_writes_no_checkpoint(isolated: Path, moment: str, sent: str) -> None:
    code, stderr = finish(start(isolated, moment, sent))
    check_stopped(isolated, code, stderr, getattr(signal, sent))
    assert "no checkpoint was written" in our_lines(stderr)[0]
    assert not list(isolated.glob("runs/**/*.ckpt"))


@pytest.mark.parametrize(
    ("moment", "sent", "step", "args"),
    [
        # the step under way is completed, the next is not started (two batches a step: a whole accumulation)
        ("train_step:3", "SIGINT", 4, ("--trainer.accumulate_grad_batches", "2")),
        # in the middle of an accumulation (batch 4 is the second of step 1's three): step 1 is completed first
        ("batch:4", "SIGTERM", 2, ("--trainer.accumulate_grad_batches", "3")),
        # the periodic last.ckpt of step 5 is being written: it is finished, then the fit stops
        ("checkpoint", "SIGINT", 5, ()),
        pytest.param("checkpoint", "SIGTERM", 5, (), marks=pytest.mark.slow),
        ("validation", "SIGTERM", 12, ()),  # epoch 0's validation, after its 12 steps
    ],
    ids=str,
)
def test_a_signal_during_training_saves_last_ckpt_and_exits(
    isolated: Path, moment: str, sent: str, step: int, args: tuple[str, ...]
) -> None:
    signum = getattr(signal, sent)
    code, stderr = finish(start(isolated, moment, sent, "--trainer.logger", "false", *args))
    check_stopped(isolated, code, stderr, signum)
    state = saved_last(isolated)
    assert state["global_step"] == step and state["epoch"] == 0
    line = our_lines(stderr)[0]
    assert f"step {step}; saved runs/mnist-lightning/" in line and "--ckpt_path last" in line
    # the state of whole optimizer steps: every batch of the steps taken, none of the next
    batches = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert batches == step * (int(args[1]) if args else 1)


def test_ctrl_c_stops_a_fit_that_inherited_ctrl_c_ignored(isolated: Path) -> None:
    # a background job of a non-interactive shell (``pytest ... &`` in a script) starts with SIGINT ignored: the
    # fit still stops on kill -INT (the Ctrl+C test once waited for a fit that never heard it)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = start(isolated, "train_step:2", "SIGINT", "--trainer.logger", "false",
                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    code, stderr = finish(process)
    check_stopped(isolated, code, stderr, signal.SIGINT)
    assert saved_last(isolated)["global_step"] == 3


# --- the rules, in this process -------------------------------------------------------------------------------------


@pytest.fixture
def listening() -> object:
    handlers = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    interrupts.listen()
    yield
    interrupts.disarm()
    interrupts.end_startup_guard()
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_a_training_fit_stops_at_its_next_safe_point_and_a_second_signal_at_once(listening: object) -> None:
    interrupts.defer()
    os.kill(os.getpid(), signal.SIGINT)  # noted, not raised: the step under way goes on
    with pytest.raises(KeyboardInterrupt):
        interrupts.stop_if_requested()  # ...to the safe point
    interrupts.defer()
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        os.kill(os.getpid(), signal.SIGTERM)  # the user insists
    assert interrupts.received() == signal.SIGTERM


def test_a_fit_blocked_away_from_safe_points_is_stopped_after_the_grace_period(
    listening: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(interrupts, "GRACE_SECONDS", 0.5)
    interrupts.defer()
    blocked = threading.Event()
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        blocked.wait(FAILURE_BOUND_S)  # a blocking wait that reaches no safe point
    assert not blocked.is_set()


def test_outside_a_training_loop_a_signal_is_raised_at_once(listening: object) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_on_the_way_out_a_further_signal_ends_the_process_at_once(
    listening: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(interrupts.os, "_exit", exit_now)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what Lightning does while it shuts a fit down
    interrupts.state_saved()  # last.ckpt written: Ctrl+C is heard again, and no longer waits for anything
    with pytest.raises(Exited) as exited:
        os.kill(os.getpid(), signal.SIGINT)
    assert exited.value.args == (130,)
    assert "stopped by Ctrl+C again; exiting without waiting for W&B" in capsys.readouterr().err
