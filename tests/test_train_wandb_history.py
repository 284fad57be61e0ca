"""W&B history survives a sync: ``validate`` and ``test`` of a checkpoint log into runs of their own (new ids, in
the training run's group, ``job_type`` the command, ``training_run_id`` in their config) and never reopen the
training run, so no two offline folders share an id and syncing them cannot replace one history with another. Read
back from the offline ``.wandb`` files; the printed ``wandb sync`` line names every folder, quoted for the shell."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from conftest import CONFIGS, run_cli
from wandb_offline import read_records, read_run

LINEAR = ("--config", str(CONFIGS / "linear.yaml"))
TINY = (
    "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", "2",
    "--trainer.enable_progress_bar", "false",
)  # fmt: skip


def run_record(folder: Path) -> Any:
    """The run record (id, group, job type) of an offline run folder."""
    (log,) = folder.glob("run-*.wandb")
    return next(r.run for r in read_records(log) if r.WhichOneof("record_type") == "run")


def synced_folders(stderr: str, cwd: Path) -> list[Path]:
    """The folders of the printed ``wandb sync`` command, parsed as a shell would."""
    (line,) = [line for line in stderr.splitlines() if "upload it with: wandb sync" in line]
    words = shlex.split(line.split("upload it with: ", 1)[1])
    assert words[:2] == ["wandb", "sync"]
    return [cwd / word for word in words[2:]]


def test_evaluations_keep_the_training_history_and_their_own_rows_through_a_sync(isolated: Path) -> None:
    root = "two words"  # every printed path has a space in it
    common = ("--trainer.default_root_dir", root)
    run_cli("fit", *LINEAR, *TINY, *common, "--trainer.max_epochs", "3", "--trainer.logger.init_args.group", "lin")
    (run_dir,) = (isolated / root / "mnist-lightning").iterdir()
    (training_folder,) = (isolated / root / "wandb").glob("offline-run-*")
    training_bytes = {p: p.read_bytes() for p in training_folder.rglob("*.wandb")}
    training = read_run(training_folder)
    steps = training.metric("trainer/global_step")
    assert max(steps) == 15 and len(training.metric("val/acc")) == 3

    best = next(run_dir.glob("checkpoints/best-*.ckpt"))
    tested = run_cli("test", "--ckpt_path", str(best), *common, *TINY)
    validated = run_cli("validate", "--ckpt_path", str(best), *common, *TINY)

    folders = sorted((isolated / root / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    runs = [read_run(folder) for folder in folders]
    assert len(folders) == 3 and len({run.run_id for run in runs}) == 3  # no id shared: nothing to overwrite
    # the training run's files are exactly as fit left them: its history and summary are intact
    assert {p: p.read_bytes() for p in training_folder.rglob("*.wandb")} == training_bytes
    assert runs[0].run_id == run_dir.name and runs[0].metric("trainer/global_step") == steps

    evaluations = [(folders[1], runs[1], "test", "test/acc"), (folders[2], runs[2], "validate", "val/acc")]
    for folder, run, command, key in evaluations:
        record = run_record(folder)
        assert record.job_type == command and record.run_group == "lin"  # the training run's group, from its config
        assert run.config["training_run_id"] == run_dir.name
        assert run.metric(key) and run.summary[key] == run.metric(key)[-1]

    # the figures of an evaluation still go to the training run's folder; no new run folder
    assert [p.name for p in (isolated / root / "mnist-lightning").iterdir()] == [run_dir.name]
    # each sync line names the training run and the evaluation, as paths that exist once the shell has split them
    assert synced_folders(tested.stderr, isolated) == [folders[0], folders[1]]
    assert synced_folders(validated.stderr, isolated) == [folders[0], folders[2]]


def test_an_evaluation_of_a_run_without_a_group_is_grouped_under_the_run_id(isolated: Path) -> None:
    run_cli("fit", *LINEAR, *TINY, "--trainer.max_epochs", "1")
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    run_cli("test", "--ckpt_path", str(next(run_dir.glob("checkpoints/best-*.ckpt"))), *TINY)
    folders = sorted((isolated / "runs" / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    assert run_record(folders[0]).run_group == ""  # fit is unchanged
    evaluation = run_record(folders[1])
    assert evaluation.run_group == run_dir.name and evaluation.job_type == "test"


def test_a_resumed_offline_fit_goes_on_after_the_steps_of_its_first_part(isolated: Path) -> None:
    common = ("fit", *LINEAR, *TINY)
    run_cli(*common, "--trainer.max_epochs", "1")
    run_cli(*common, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    first, second = sorted((isolated / "runs" / "wandb").glob("offline-run-*"), key=lambda p: p.stat().st_mtime)
    assert run_record(first).run_id == run_record(second).run_id  # one run, in two folders synced in order

    def steps(folder: Path) -> list[int]:
        (log,) = folder.glob("run-*.wandb")
        return [r.history.step.num for r in read_records(log) if r.WhichOneof("record_type") == "history"]

    # the second part's rows follow the first's: appended by a sync, none lands on a step the run already has
    assert steps(first) and steps(second) and min(steps(second)) > max(steps(first))
    assert read_run(second).metric("trainer/global_step")[-1] == 10
