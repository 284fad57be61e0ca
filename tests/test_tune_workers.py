"""``tune --workers N``: N processes on one study, each training with its share of the cores as torch threads,
unless the user's ``--threads`` or ``OMP_NUM_THREADS`` says otherwise."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import start_console_script, subprocess_env
from digit_helpers import python_path
from optuna.trial import TrialState
from tune_models import BARRIER_ENV

from mnist_lightning.threads import THREADS_ENV, thread_share
from mnist_lightning.tuning.study import open_journal


def write_space() -> Path:
    space = {
        "study": "workers",
        "base": "linear",
        "fixed": {
            # each trial waits until a trial of the other process has started: both processes surely train
            "model.class_path": "tune_models.BarrierClassifier",
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 3,
            "trainer.limit_val_batches": 2,
            "trainer.logger": False,
        },
        "params": {"model.init_args.lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True}},
        "n_trials": 2,
        "pruner": "none",
        "sampler": "random",
    }
    Path("space.yaml").write_text(yaml.safe_dump(space))
    return Path("space.yaml")


@pytest.mark.parametrize(
    ("flags", "user_threads", "expected"),
    [
        ([], None, thread_share(2)),  # the fair share: cores // 2
        # the flag wins over OMP_NUM_THREADS, which wins over the share (see test_threads.py): the worker gets the
        # count the first process resolved
        (["--threads", "3"], "2", 3),
    ],
)
def test_workers_train_with_their_share_of_the_cores(flags: list[str], user_threads: str | None, expected: int) -> None:
    barrier = Path("barrier").resolve()
    barrier.mkdir()
    env = {k: v for k, v in subprocess_env().items() if k != THREADS_ENV}  # the test session sets it to 1
    env |= {"PYTHONPATH": python_path(), BARRIER_ENV: str(barrier)}
    if user_threads is not None:
        env[THREADS_ENV] = user_threads
    process = start_console_script("tune", str(write_space()), "--workers", "2", *flags, env=env)
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]

    trials = load_trials(Path("runs/tune/workers/study.journal"))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    owners = {t.system_attrs["tune:owner"]["pid"] for t in trials}
    assert process.pid in owners and len(owners) == 2  # this process and the worker it started
    assert [t.user_attrs["threads"] for t in trials] == [expected, expected]

    # one line per trial, whichever process ran it; the summary once, from the first process
    output = stdout + stderr
    assert sum(line.startswith("tune workers: trial ") for line in output.splitlines()) == 2, output
    assert output.count("tune workers: best val/acc") == 1


# slow: 20 s of two processes training; the fast suite keeps the workers' share and the flag that wins over it
@pytest.mark.slow
def test_sigterm_to_the_first_process_stops_the_workers_too() -> None:
    barrier = Path("barrier").resolve()
    barrier.mkdir()
    space = write_space()
    settings = yaml.safe_load(space.read_text())
    settings["fixed"]["trainer.max_epochs"] = 200  # long trials: both still train when the signal comes
    space.write_text(yaml.safe_dump(settings))
    env = subprocess_env() | {"PYTHONPATH": python_path(), BARRIER_ENV: str(barrier)}
    process = start_console_script("tune", str(space), "--workers", "2", env=env)
    journal = Path("runs/tune/workers/study.journal")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            trials = load_trials(journal) if journal.is_file() and journal.stat().st_size else []
            if len(trials) == 2 and all(t.intermediate_values for t in trials):  # both processes train
                break
            time.sleep(0.3)
        assert process.poll() is None, process.communicate()[1][-3000:]
        os.kill(process.pid, signal.SIGTERM)  # the first process only, as a batch system might
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 143, stderr[-3000:]
    trials = load_trials(journal)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # the worker's trial was stopped too, not finished
    assert all(t.user_attrs.get("interrupted") for t in trials)
    (line,) = [line for line in stderr.splitlines() if "continue the study" in line]
    assert shlex.split(line.split(" with: ", 1)[1])[-2:] == ["--workers", "2"]


def load_trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name="workers", storage=open_journal(journal.parent)).trials
    return [t for t in trials if not t.user_attrs.get("surplus")]
