"""``tune``'s faults: each is one line before any trial runs and leaves nothing behind (no study folder, no journal
entry); a crash inside a trial never leaves a study that blocks the corrected run, nor a table that disagrees with
the journal."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import run_cli
from optuna.trial import TrialState
from tune_models import CRASH_ENV

from mnist_lightning.tuning import load_space
from mnist_lightning.tuning.study import open_journal, open_study

SMALL = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 4,
    "trainer.limit_val_batches": 2,
    "trainer.logger": False,
}
LR = {"model.init_args.lr": {"low": 1.0e-3, "high": 1.0e-1, "log": True}}


def write_space(study: str, params: dict[str, Any] | None = None, path: str = "space.yaml", **settings: Any) -> Path:
    space = {
        "study": study,
        "base": "linear",
        "fixed": {**SMALL, **settings.pop("fixed", {})},
        "params": LR if params is None else params,
        "n_trials": 1,
        "pruner": "none",
        "sampler": "random",
        "seed": 0,
        **settings,
    }
    Path(path).write_text(yaml.safe_dump(space))
    return Path(path)


def assert_one_line_and_nothing_left(result: Any, expected: str, study: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("mnist-lightning: error: ") and expected in lines[-1], result.stderr[-2000:]
    assert not any(f"trial {n}" in line for line in lines for n in range(3))  # before any trial
    assert not Path("runs/tune", study).exists()
    assert not Path("runs/mnist-lightning").exists()  # no trial's run folder either


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # a step that does not reach high: Optuna lowers high (every trial used batch 32 of 16..40 in steps of 16)
        ({"data.batch_size": {"low": 16, "high": 40, "step": 16}}, "Optuna would silently search 16..32 only"),
        ({"model.init_args.dropout": {"low": 0.0, "high": 0.5, "step": 0.2}}, "set high to 0.4 or 0.6"),
        ({"model.init_args.lr": {"low": 1.0e-4, "high": 0.1, "log": True, "step": 0.01}}, "cannot be combined"),
        ({"model.init_args.lr": {"low": 0.1, "high": 0.001}}, "low 0.1 must be below high 0.001"),
        ({"trainer.accumulate_grad_batches": {"low": 0, "high": 4, "log": True}}, "log scale needs low above 0"),
        ({"data.batch_size": [32, 64, 32]}, "choices 32 and 32 are the same value"),
        ({"data.batch_size": [32, 32.0]}, "choices 32 and 32.0 are the same value"),
        ({"model.init_args.hidden_sizes": [[64], [128], [64]]}, "choices [64] and [64] are the same value"),
        # whole bounds for a fraction: only 0 and 1 would be tried
        ({"model.init_args.dropout": {"low": 0, "high": 1}}, "only the whole numbers 0..1 would be tried"),
    ],
)
def test_a_range_optuna_would_change_is_one_line(params: dict[str, Any], expected: str) -> None:
    result = run_cli("tune", str(write_space("ranges", params)), check=False)
    assert_one_line_and_nothing_left(result, expected, "ranges")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"metric": "val/accuracy"}, "'val/accuracy' is not logged by the model; the metrics logged at validation"),
        ({"metric": "val_acc"}, "val/acc, val/acc_best, val/loss"),
        ({"metric": "train/loss", "direction": "minimize"}, "logged after validation"),
        ({"fixed": {"trainer.limit_val_batches": 0}}, "the trials never validate"),
        ({"fixed": {"checkpoint.monitor": "val/loss"}}, "a trial's checkpoint follows the search"),
    ],
)
def test_a_metric_no_trial_would_report_is_one_line(settings: dict[str, Any], expected: str) -> None:
    result = run_cli("tune", str(write_space("metric", **settings)), check=False)
    assert_one_line_and_nothing_left(result, expected, "metric")


def create_study(**settings: Any) -> Path:
    """A study as ``tune`` creates it (its space stored), without training."""
    space = load_space(write_space("kept", **settings))
    open_study(space, Path("runs/tune/kept"), resume=False)
    return Path("runs/tune/kept/study.journal")


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        ({"params": {**LR, "data.batch_size": [32, 64]}}, "parameter data.batch_size added"),
        ({"params": {"data.batch_size": [32, 64]}}, "parameter model.init_args.lr removed"),
        ({"params": {"model.init_args.lr": {"low": 1.0e-3, "high": 0.5, "log": True}}}, "now float 0.001..0.5 log"),
        ({"params": {"model.init_args.lr": {"low": 1.0e-3, "high": 0.1}}}, "was float 0.001..0.1 log"),
        ({"params": {"model.init_args.lr": [0.001, 0.01]}}, "now choices [0.001, 0.01]"),
        ({"fixed": {"trainer.max_epochs": 3}}, "fixed trainer.max_epochs was 1, now 3"),
        ({"fixed": {"trainer.gradient_clip_val": 1.0}}, "fixed trainer.gradient_clip_val was '(unset)', now 1.0"),
        ({"metric": "val/loss", "direction": "minimize"}, "was 'val/acc', now 'val/loss'"),
        ({"base": "mlp_128_64"}, "base was ['linear'], now ['mlp_128_64']"),
    ],
)
def test_resuming_with_another_space_is_one_line(changed: dict[str, Any], expected: str) -> None:
    journal = create_study()
    before = journal.read_bytes()
    result = run_cli("tune", str(write_space("kept", path="changed.yaml", **changed)), "--resume", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mnist-lightning: error: study kept in runs/tune/kept was started with another search")
    assert expected in last and "--study NAME" in last, last
    assert journal.read_bytes() == before  # not one entry added
    assert not Path("runs/mnist-lightning").exists()


def test_resuming_with_the_same_space_but_more_trials_is_allowed() -> None:
    journal = create_study()
    run_cli("tune", str(write_space("kept", path="again.yaml")), "--resume", "--n_trials", "1")
    trials = optuna.load_study(study_name="kept", storage=open_journal(journal.parent)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]


def crash_space(study: str) -> Path:
    return write_space(study, fixed={"model.class_path": "tune_models.CrashingClassifier"}, n_trials=2)


def test_a_crash_in_the_first_trial_of_a_new_study_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_ENV, "1")
    result = run_cli("tune", str(crash_space("crash")), check=False)
    assert result.returncode == 1
    assert "RuntimeError: a bug in the training step" in result.stderr  # a bug keeps its traceback
    assert "the new study was removed" in result.stderr
    assert not Path("runs/tune").exists()

    monkeypatch.delenv(CRASH_ENV)
    run_cli("tune", str(crash_space("crash")))  # the same command, once the bug is fixed: no --resume needed
    assert [row["state"] for row in read_table("crash")] == ["complete", "complete"]


def read_table(study: str) -> list[dict[str, str]]:
    with Path("runs/tune", study, "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_crash_in_a_kept_study_marks_the_trial_and_the_printed_line_reruns_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_cli("tune", str(crash_space("crash")), "--n_trials", "1")  # one complete trial
    monkeypatch.setenv(CRASH_ENV, "1")
    result = run_cli("tune", str(crash_space("crash")), "--resume", check=False)
    assert result.returncode == 1 and "RuntimeError: a bug in the training step" in result.stderr

    trials = optuna.load_study(study_name="crash", storage=open_journal(Path("runs/tune/crash"))).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs.get("crashed")
    rows = read_table("crash")  # the table agrees with the journal
    assert [(row["trial"], row["state"]) for row in rows] == [("0", "complete"), ("1", "fail")]
    assert "a bug in the training step" in rows[1]["note"]

    monkeypatch.delenv(CRASH_ENV)
    (line,) = [line for line in result.stderr.splitlines() if "continue the study" in line]
    command = shlex.split(line.split(" with: ", 1)[1])
    run_cli(*command[1:])
    rows = read_table("crash")
    assert [row["state"] for row in rows] == ["complete", "fail", "complete"]
    assert rows[2]["note"] == "rerun of trial 1"
