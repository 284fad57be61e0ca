"""The report on W&B: its numbers, robustness table and figures logged into a run of its own (``job_type``
``report``), grouped with and linked to the run that trained the checkpoint, which is never reopened."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_lightning.checkpoints import CheckpointInfo
from mnist_lightning.data.transforms import SHIFTS
from mnist_lightning.evaluation.results import ModelReport
from mnist_lightning.outputs import ensure_writable_folder
from mnist_lightning.runs import PROJECT_FOLDER, new_run_id


def wandb_root(info: CheckpointInfo) -> tuple[Path, str]:
    """The folder whose ``wandb/`` holds the training run's files, and the W&B project: from the run-folder layout
    ``<save_dir>/<project>/<run id>/checkpoints/<file>``, else ``runs`` and ``mnist-lightning``."""
    parents = info.path.resolve().parents
    if info.path.parent.name == "checkpoints" and len(parents) > 3:
        return parents[3], parents[2].name
    return Path("runs"), PROJECT_FOLDER


def report_scalars(report: ModelReport) -> dict[str, float]:
    """The numbers logged as ``report/...``: accuracy, calibration before and after temperature, per-class scores."""
    metrics = report.metrics
    cal = metrics["calibration"]
    scalars: dict[str, float] = {
        "report/test_acc": metrics["test_accuracy"],
        "report/ece": cal["ece"],
        "report/mce": cal["mce"],
        "report/nll": cal["nll"],
        "report/temperature": cal["temperature"],
        "report/ece_after_temperature": cal["ece_after_temperature"],
        "report/mce_after_temperature": cal["mce_after_temperature"],
        "report/nll_after_temperature": cal["nll_after_temperature"],
    }
    for name in ("precision", "recall", "f1"):
        for digit, value in enumerate(metrics["per_class"][name]):
            scalars[f"report/{name}/{digit}"] = value
    return scalars


def log_to_wandb(report: ModelReport, files: Sequence[Path]) -> None:
    """Log the report's numbers, table and figures (the PNGs among ``files``: the shared ones and this model's) into
    a W&B run of its own, offline when not logged in: a new run id, ``job_type`` ``report``, the training run's
    group and ``training_run_id`` in its config. The training run is never reopened: offline, a second folder with
    its id would replace its history when synced (wandb issues #3841, #5865), so its files stay as ``fit`` left them."""
    import wandb

    from mnist_lightning.tracking import TRAINING_RUN_KEY, sync_command, sync_folders, training_group, wandb_mode

    assert report.info is not None and report.info.wandb_run_id
    training_id = report.info.wandb_run_id
    root, project = wandb_root(report.info)
    mode = wandb_mode()
    if mode == "disabled":  # W&B switched off: no run, and no sync line to print
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    ensure_writable_folder(root / "wandb", "the W&B folder")
    group = training_group(root, project, training_id)
    # an id chosen here, never WANDB_RUN_ID (which a sweep agent sets to the run it trains)
    run = wandb.init(
        id=new_run_id(), project=project, dir=str(root), mode=mode, job_type="report", group=group,
        config={TRAINING_RUN_KEY: training_id}, resume="never",
    )  # fmt: skip
    scalars = report_scalars(report)
    rows = [
        [shift, level, accuracy]
        for shift, accuracies in report.robustness.items()
        for level, accuracy in zip(SHIFTS[shift].levels, accuracies, strict=True)
    ]
    images = {
        f"report/{name.split('-', 1)[0]}": wandb.Image(str(path))
        for path in files
        if path.suffix == ".png"
        for name in [path.stem]
        if not name.startswith(("confusion-", "mistakes-")) or name.endswith(f"-{report.slug}")
    }
    run.log({**scalars, **images, "report/robustness": wandb.Table(["shift", "level", "accuracy"], rows)})
    run.summary.update(scalars)
    folder = Path(run.dir).parent
    entity = run.entity or os.environ.get("WANDB_ENTITY") or "your default entity"
    where = (
        f"entity {entity}, project {run.project}, run id {run.id}, job type report, "
        f"of training run {training_id} in group {group}"
    )
    url = run.url if mode == "online" else None
    run.finish()
    if mode != "online":
        # every folder quoted for the shell, so that a path with spaces syncs as printed
        parts = sync_folders(folder, run.id, training_id)
        print(
            f"W&B: report logged into an offline run of its own ({where}) in {folder.resolve()}; "
            f"upload it with: {sync_command(parts)}",
            file=sys.stderr,
        )
    else:
        print(f"W&B: report logged into a run of its own ({where}): {url}", file=sys.stderr)
