"""What ``tune`` tells the user to run next works exactly as printed: the command that continues an interrupted
study (paths with spaces, a study and a root of its own, run from another folder), and ``fit --config best.yaml``."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import run_console_script, start_console_script
from optuna.trial import TrialState

from mnist_lightning.tuning.study import open_journal


def write_space(path: Path, params: dict[str, Any], **fixed: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    space = {
        "study": "named_in_the_file",
        "base": "linear",
        "fixed": {
            "trainer.limit_train_batches": 5,
            "trainer.limit_val_batches": 2,
            "trainer.logger": False,
            **fixed,
        },
        "params": params,
        "n_trials": 1,
        "pruner": "none",
        "sampler": "random",
        "seed": 0,
    }
    path.write_text(yaml.safe_dump(space))
    return path


def load_trials(journal: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_journal(journal.parent)).trials


def printed_command(stderr: str, marker: str) -> list[str]:
    """The command in the last line holding ``marker``, split as a shell would split it."""
    (line, *_) = [line for line in reversed(stderr.splitlines()) if marker in line] or [""]
    assert line, stderr[-3000:]
    args = shlex.split(line.split(marker, 1)[1])
    assert args[0] == "mnist-lightning", line
    return args


def test_the_continue_line_after_ctrl_c_continues_that_study(monkeypatch: pytest.MonkeyPatch) -> None:
    # a trial long enough to be interrupted while it trains: many short epochs
    space = write_space(
        Path("my spaces/slow space.yaml"), {"model.init_args.lr": [1.0e-3]}, **{"trainer.max_epochs": 8}
    )
    journal = Path("tune root/tune/custom/study.journal")
    process = start_console_script("tune", str(space), "--study", "custom", "--root", "tune root")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            trials = load_trials(journal, "custom") if journal.is_file() and journal.stat().st_size else []
            if trials and trials[0].intermediate_values:  # training: it has validated once
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1][-3000:]
        os.killpg(process.pid, signal.SIGINT)  # Ctrl+C in a terminal reaches the whole process group
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr[-3000:]
    (stopped,) = load_trials(journal, "custom")
    assert stopped.state == TrialState.FAIL and stopped.user_attrs.get("interrupted")

    command = printed_command(stderr, " with: ")
    here = Path.cwd()
    (here / "elsewhere").mkdir()
    monkeypatch.chdir(here / "elsewhere")
    run_console_script(*command[1:])  # exactly as printed, from another folder

    trials = load_trials(here / journal, "custom")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs.get("retry_of") == 0 and trials[1].params == stopped.params
    # no other study was made or continued: not by the space file's name, not under ./runs
    assert not Path("runs/tune").exists() and not (here / "runs/tune").exists()
    assert [p.name for p in (here / "tune root/tune").iterdir()] == ["custom"]


def test_best_yaml_alone_trains_the_best_trial() -> None:
    space = write_space(
        Path("a space.yaml"),
        {"model.init_args.lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True}, "data.batch_size": [32, 64]},
        **{"trainer.max_epochs": 1},
    )
    result = run_console_script("tune", str(space), "--n_trials", "2", "--root", "my runs")
    command = printed_command(result.stderr, "Train the best: ")
    assert command[1:3] == ["fit", "--config"] and len(command) == 4
    best = yaml.safe_load(Path(command[3]).read_text())
    assert best["model"]["class_path"].endswith("MLPClassifier")  # complete: the base preset's model is in it

    before = set(Path("runs/mnist-lightning").iterdir())
    fit = run_console_script(*command[1:], check=False)  # exactly as printed
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "Traceback" not in fit.stderr
    (new_run,) = set(Path("runs/mnist-lightning").iterdir()) - before
    trained = yaml.safe_load((new_run / "config.yaml").read_text())
    assert trained["model"]["init_args"]["lr"] == pytest.approx(best["model"]["init_args"]["lr"])
    assert trained["data"]["batch_size"] == best["data"]["batch_size"]
    assert trained["model"]["init_args"]["hidden_sizes"] == []  # the linear preset's network, from best.yaml alone
    assert trained["trainer"]["limit_train_batches"] == 5
