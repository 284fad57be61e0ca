"""W&B history survives a sync, for ``report`` too: the report logs into a W&B run of its own (a new id, ``job_type``
``report``, the training run's group, ``training_run_id`` in its config) and never reopens the training run, whose
offline files stay byte for byte as ``fit`` left them. Read back from the offline ``.wandb`` files; the printed
``wandb sync`` line names every folder (each part of a resumed training run, then the report's), quoted for a path
with spaces, and the hint names the report run and the training run it belongs to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from test_train_wandb_history import LINEAR, TINY, run_record, synced_folders
from wandb_offline import read_run

# one shift on a few hundred images: the test is about where the rows go, not the curves
QUICK_REPORT = ("--shifts", "rotation", "--shift_images", "200", "--batch_size", "1000")


def by_age(wandb_dir: Path) -> list[Path]:
    return sorted(wandb_dir.glob("offline-run-*"), key=lambda p: p.stat().st_mtime)


def test_report_logs_into_a_run_of_its_own_and_leaves_the_training_run_untouched(isolated: Path) -> None:
    root = "two words"  # every printed path has a space in it
    fit = ("fit", *LINEAR, *TINY, "--trainer.default_root_dir", root, "--trainer.logger.init_args.group", "lin")
    run_cli(*fit, "--trainer.max_epochs", "1")
    run_cli(*fit, "--trainer.max_epochs", "2", "--ckpt_path", "last")  # a resumed run: two folders, one id
    (run_dir,) = (isolated / root / "mnist-lightning").iterdir()
    wandb_dir = isolated / root / "wandb"
    training_folders = by_age(wandb_dir)
    assert len(training_folders) == 2 and {run_record(f).run_id for f in training_folders} == {run_dir.name}
    training_bytes = {p: p.read_bytes() for folder in training_folders for p in folder.rglob("*") if p.is_file()}

    best = next(run_dir.glob("checkpoints/best-*.ckpt"))
    reported = run_cli("report", "--ckpt_path", str(best), *QUICK_REPORT)

    # the training run's files are exactly as fit left them: no row, summary or config of the report in them
    after = {p: p.read_bytes() for folder in training_folders for p in folder.rglob("*") if p.is_file()}
    assert after == training_bytes
    folders = by_age(wandb_dir)
    assert folders[:2] == training_folders and len(folders) == 3
    report_folder = folders[2]
    record = run_record(report_folder)
    assert record.run_id != run_dir.name  # an id of its own: a sync cannot replace one history with the other
    assert record.job_type == "report" and record.run_group == "lin"  # the training run's group, from its config
    logged = read_run(report_folder)
    assert logged.config["training_run_id"] == run_dir.name

    # what the report logs, on its own run
    data = json.loads((run_dir / "report" / "report.json").read_text())
    assert logged.summary["report/test_acc"] == pytest.approx(data["models"][0]["test_accuracy"])
    assert logged.metric("report/ece") == [pytest.approx(data["models"][0]["calibration"]["ece"])]
    (row,) = logged.history
    for name in ("reliability", "robustness", "confusion", "mistakes"):  # the figures, the robustness table
        expected = "table-file" if name == "robustness" else "image-file"
        assert row[f"report/{name}/_type"] == expected
        assert (report_folder / "files" / row[f"report/{name}/path"]).is_file()  # in the report's folder
    table = json.loads((report_folder / "files" / row["report/robustness/path"]).read_text())
    assert table["columns"] == ["shift", "level", "accuracy"] and {r[0] for r in table["data"]} == {"rotation"}

    # the sync line names every folder, in order, as paths that exist once the shell has split them
    assert synced_folders(reported.stderr, isolated) == folders
    assert all(folder.is_dir() and " " in str(folder) for folder in synced_folders(reported.stderr, isolated))
    (hint,) = [line for line in reported.stderr.splitlines() if "upload it with" in line]
    assert f"run id {record.run_id}" in hint and "project mnist-lightning" in hint and "entity " in hint
    assert f"training run {run_dir.name}" in hint


def test_a_report_of_a_run_without_a_group_is_grouped_under_the_training_run_id(isolated: Path) -> None:
    run_cli("fit", *LINEAR, *TINY, "--trainer.max_epochs", "1")
    (run_dir,) = (isolated / "runs" / "mnist-lightning").iterdir()
    best = next(run_dir.glob("checkpoints/best-*.ckpt"))
    reported = run_cli("report", "--ckpt_path", str(best), *QUICK_REPORT)
    training, report = by_age(isolated / "runs" / "wandb")
    assert run_record(training).run_group == ""  # fit is unchanged
    assert run_record(report).run_group == run_dir.name and run_record(report).job_type == "report"
    assert synced_folders(reported.stderr, isolated) == [training, report]
