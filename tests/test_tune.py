"""``mnist-lightning tune``: real searches on the real MNIST, each trial a few batches of the linear preset."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import CONFIGS, run_cli, start_console_script
from optuna.trial import TrialState
from wandb_offline import read_run

from mnist_lightning.tuning.study import open_journal

# a few batches per epoch and a small validation: a trial takes seconds
SMALL = {"trainer.limit_train_batches": 5, "trainer.limit_val_batches": 3, "trainer.enable_progress_bar": False}


def write_space(path: Path, study: str, params: dict[str, Any], wandb: bool = False, **settings: Any) -> Path:
    fixed = {"trainer.max_epochs": 1, **SMALL, **({} if wandb else {"trainer.logger": False})}
    space = {
        "study": study,
        "base": "linear",
        "fixed": {**fixed, **settings.pop("fixed", {})},
        "params": params,
        "n_trials": 2,
        "pruner": "none",
        "sampler": "random",
        "seed": 0,
        **settings,
    }
    path.write_text(yaml.safe_dump(space))
    return path


def read_table(study: str) -> list[dict[str, str]]:
    with (Path("runs/tune") / study / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def load_study(study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_journal(Path("runs/tune") / study))


def start_tune(*args: str) -> subprocess.Popen[str]:
    return start_console_script("tune", *args, stdout=subprocess.DEVNULL)


def test_tiny_study_writes_its_files_and_best_yaml_trains() -> None:
    space = write_space(
        Path("space.yaml"),
        "tiny",
        {"model.init_args.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "data.batch_size": [32, 64]},
        wandb=True,
        n_trials=3,
    )

    result = run_cli("tune", str(space))

    folder = Path("runs/tune/tiny")
    for name in ("best.yaml", "trials.csv", "trials.md", "history.png", "importance.png", "study.journal"):
        assert (folder / name).is_file(), name
    rows = read_table("tiny")
    assert [row["trial"] for row in rows] == ["0", "1", "2"]
    assert all(row["state"] == "complete" and float(row["val/acc"]) > 0 for row in rows)
    for row in rows:  # each trial trained with its own values
        trained = yaml.safe_load((Path(row["run"]) / "config.yaml").read_text())
        assert trained["model"]["init_args"]["lr"] == pytest.approx(float(row["model.init_args.lr"]))
        assert trained["data"]["batch_size"] == int(row["data.batch_size"])
    md_rows = [
        line for line in (folder / "trials.md").read_text().splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert len(md_rows) == 1 + 3  # header + one row per trial
    best_row = max(rows, key=lambda row: float(row["val/acc"]))
    summary = result.stderr.strip().splitlines()[-2]
    assert f"best val/acc {float(best_row['val/acc']):.4f} (trial {best_row['trial']}" in summary
    assert "3 complete, 0 pruned, 0 failed" in summary

    # one W&B run per trial, grouped by study and tagged
    offline = sorted(Path("runs/wandb").glob("offline-run-*"))
    assert len(offline) == 3
    for run_dir in offline:
        run = read_run(run_dir)
        assert run.group == "tiny"
        assert "tune" in run.tags

    # best.yaml on top of the base preset trains the best trial's settings
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["model"]["init_args"]["lr"] == pytest.approx(float(best_row["model.init_args.lr"]))
    assert best["data"]["batch_size"] == int(best_row["data.batch_size"])
    before = set(Path("runs/mnist-lightning").iterdir())
    run_cli(
        "fit",
        "--config",
        str(CONFIGS / "linear.yaml"),
        "--config",
        str(folder / "best.yaml"),
        "--trainer.logger",
        "false",
    )
    (new_run,) = set(Path("runs/mnist-lightning").iterdir()) - before
    trained = yaml.safe_load((new_run / "config.yaml").read_text())
    assert trained["model"]["init_args"]["lr"] == pytest.approx(best["model"]["init_args"]["lr"])
    assert trained["data"]["batch_size"] == best["data"]["batch_size"]
    assert trained["trainer"]["limit_train_batches"] == SMALL["trainer.limit_train_batches"]


def test_absurd_learning_rates_are_pruned() -> None:
    # a learning rate of 1e-9 leaves the linear model at chance after the first epoch: the median pruner stops it
    space = write_space(
        Path("space.yaml"),
        "prune",
        {"model.init_args.lr": [1.0e-2, 1.0e-9]},
        fixed={"trainer.max_epochs": 3},
        n_trials=5,
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    result = run_cli("tune", str(space))
    rows = read_table("prune")
    pruned = [row for row in rows if row["state"] == "pruned"]
    assert pruned, rows
    for row in pruned:
        assert float(row["model.init_args.lr"]) == pytest.approx(1.0e-9)
        assert int(row["epochs"]) < 3  # stopped before the last epoch
    assert f"{len(pruned)} pruned" in result.stderr


def test_resume_after_sigkill_keeps_the_finished_trial() -> None:
    space = write_space(
        Path("space.yaml"),
        "resume",
        {"model.init_args.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}},
        fixed={"trainer.max_epochs": 2},
        n_trials=2,
    )
    process = start_tune(str(space))
    try:
        # wait until trial 0 is complete and trial 1 is training, then kill the whole process without warning
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if Path("runs/tune/resume/trials.csv").is_file():  # written after each trial
                states = [t.state for t in load_study("resume").get_trials()]
                if states[:2] == [TrialState.COMPLETE, TrialState.RUNNING]:
                    break
            time.sleep(0.3)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    first = load_study("resume").trials[0]

    result = run_cli("tune", str(space), "--resume")

    assert "running interrupted trial(s) [1] again" in result.stderr
    trials = load_study("resume").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].value == first.value and trials[0].params == first.params  # kept, not trained again
    assert trials[2].params == trials[1].params  # the interrupted trial, run again
    rows = read_table("resume")
    assert [row["state"] for row in rows] == ["complete", "fail", "complete"]
    assert "interrupted" in rows[1]["note"] and rows[2]["note"] == "rerun of trial 1"
    assert "2 complete, 0 pruned, 1 failed" in result.stderr


def test_two_processes_share_one_study() -> None:
    space = write_space(
        Path("space.yaml"),
        "shared",
        {"model.init_args.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}},
        fixed={"trainer.max_epochs": 2},
        n_trials=4,
    )
    first = start_tune(str(space), "--resume")
    second = start_tune(str(space), "--resume")
    for process in (first, second):
        try:
            _, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        assert process.returncode == 0, stderr[-3000:]
    trials = [t for t in load_study("shared").trials if not t.user_attrs.get("surplus")]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    owners = {t.system_attrs["tune:owner"]["pid"] for t in trials}
    assert owners == {first.pid, second.pid}
    assert len(read_table("shared")) == 4


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"model.init_args.lrr": {"low": 0.001, "high": 0.1}}, "lrr"),
        ({"model.init_args.lr": {"low": 0.1, "high": 0.001}}, "low 0.1 must be below high 0.001"),
        ({"--model.init_args.lr": [0.1]}, "is not a setting name"),
    ],
)
def test_bad_space_is_one_line(params: dict[str, Any], expected: str) -> None:
    space = write_space(Path("space.yaml"), "bad", params)
    result = run_cli("tune", str(space), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mnist-lightning: error: ") and expected in last
    assert not Path("runs/tune/bad/study.journal").exists()


def test_missing_space_and_existing_study_are_one_line() -> None:
    result = run_cli("tune", "nowhere.yaml", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("mnist-lightning: error: search space nowhere.yaml")

    space = write_space(Path("space.yaml"), "taken", {"model.init_args.lr": [0.01]})
    Path("runs/tune/taken").mkdir(parents=True)
    optuna.create_study(study_name="taken", storage=open_journal(Path("runs/tune/taken")), direction="maximize")
    result = run_cli("tune", str(space), check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mnist-lightning: error: study taken already exists") and "--resume" in last


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.5], "at least 2 completed trials"), ([0.5, 0.6], "a parameter that varies")],
)
def test_importance_without_enough_trials_is_a_note(values: list[float], expected: str) -> None:
    from mnist_lightning.tuning import load_space, write_outputs

    space = load_space(write_space(Path("space.yaml"), "few", {"model.init_args.lr": [0.01]}))
    study = optuna.create_study(direction="maximize")
    for value in values:
        trial = study.ask()
        trial.suggest_categorical("model.init_args.lr", [0.01])
        study.tell(trial, value)
    folder = Path("runs/tune/few")
    rows, best, note = write_outputs(study, space, folder)
    assert note is not None and expected in note
    assert (folder / "importance.png").stat().st_size > 0 and (folder / "history.png").stat().st_size > 0
    assert len(rows) == len(values) and best.value == max(values)
    assert yaml.safe_load((folder / "best.yaml").read_text())["model"]["init_args"]["lr"] == 0.01
