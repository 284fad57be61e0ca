"""The report on W&B: its numbers, robustness table and figures added to the run that trained the checkpoint."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_lightning.checkpoints import CheckpointInfo
from mnist_lightning.data.transforms import SHIFTS
from mnist_lightning.evaluation.results import ModelReport
from mnist_lightning.outputs import ensure_writable_folder
from mnist_lightning.runs import PROJECT_FOLDER


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
    """Add the report's numbers, table and figures (the PNGs among ``files``: the shared ones and this model's) to
    the W&B run that trained the checkpoint, offline when not logged in."""
    import wandb

    from mnist_lightning.tracking import wandb_logged_in

    assert report.info is not None and report.info.wandb_run_id
    root, project = wandb_root(report.info)
    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    ensure_writable_folder(root / "wandb", "the W&B folder")
    run = wandb.init(id=report.info.wandb_run_id, resume="allow", project=project, dir=str(root), mode=mode)
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
    folder = Path(run.dir).parent.resolve()
    entity = run.entity or os.environ.get("WANDB_ENTITY") or "your default entity"
    where = f"entity {entity}, project {run.project}, run id {run.id}"
    url = run.url if mode == "online" else None
    run.finish()
    if mode != "online":
        # quoted for the shell: a run folder under a path with spaces must still sync as printed
        print(
            f"W&B: report added to the offline run ({where}) in {folder}; "
            f"upload it with: wandb sync {shlex.quote(str(folder))}",
            file=sys.stderr,
        )
    else:
        print(f"W&B: report added to the run ({where}): {url}", file=sys.stderr)
