"""What the notebooks in ``notebooks/`` share: the budget switch, training a preset, checkpoints, predictions, plots."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.figure import Figure
from torch import Tensor

from mnist_lightning.checkpoints import data_dir_to_evaluate, inspect_checkpoint
from mnist_lightning.checkpoints import load_classifier as load_checked_classifier
from mnist_lightning.cli import MNISTLightningCLI, config_dir
from mnist_lightning.data import MNISTDataModule, normalize_uint8
from mnist_lightning.errors import ConfigError
from mnist_lightning.figures.digits import digit_grid
from mnist_lightning.models.base import MNISTClassifier

BUDGET_ENV = "MNIST_LIGHTNING_NOTEBOOK_BUDGET"
Budget = Literal["ci", "full"]
HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


def notebook_budget() -> Budget:
    """``$MNIST_LIGHTNING_NOTEBOOK_BUDGET``: ``full`` (the default, real training) or ``ci`` (a few batches)."""
    budget = os.environ.get(BUDGET_ENV, "full").strip().lower() or "full"
    if budget not in ("ci", "full"):
        raise ConfigError(
            f"{BUDGET_ENV}={budget!r} is not a budget; use 'full' (real training) or 'ci' (a few batches)"
        )
    return budget  # type: ignore[return-value]


class EpochHistory(Callback):
    """Collects the epoch-level train and validation metrics and the elapsed time of every training epoch.

    An epoch is recorded when the next one starts (or training ends), so that metrics the model logs in its own
    ``on_train_epoch_end`` (which runs after the callbacks' hook) are included.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > len(self.rows):
            self._record(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > len(self.rows):
            self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": len(self.rows) + 1, "seconds": time.perf_counter() - self.started}
        row.update({key: float(metrics[key]) for key in HISTORY_KEYS if key in metrics})
        self.rows.append(row)
        shown = "  ".join(f"{key} {row[key]:.4f}" for key in HISTORY_KEYS if key in row)
        print(f"epoch {row['epoch']:>2}  {shown}  ({row['seconds']:.0f} s)", flush=True)

    def column(self, key: str) -> list[float]:
        """One metric over the epochs (``epoch``, ``seconds`` or one of ``train/loss`` ... ``val/acc``)."""
        return [row[key] for row in self.rows]


def fit_preset(
    preset: str, *args: str, root_dir: str | Path = "runs/notebooks"
) -> tuple[MNISTLightningCLI, EpochHistory]:
    """Train ``configs/<preset>.yaml`` through :class:`MNISTLightningCLI` (no W&B, no progress bar).

    ``args`` are further command-line settings such as ``"--trainer.max_epochs", "2"``. The checkpoints go to
    ``<root_dir>/<preset>/<date-time>/checkpoints`` (see :func:`latest_checkpoint`). Returns the CLI (``cli.model``,
    ``cli.datamodule``, ``cli.trainer``) and the per-epoch history.
    """
    preset_file = config_dir() / f"{preset}.yaml"
    if not preset_file.is_file():
        names = ", ".join(sorted(p.stem for p in config_dir().glob("*.yaml") if p.stem != "defaults"))
        raise ConfigError(f"no preset {preset!r} in {config_dir()}; choose one of {names}")
    argv, sys.argv = sys.argv, sys.argv[:1]  # a Jupyter kernel's own arguments are not meant for the CLI
    try:
        cli = MNISTLightningCLI(
            args=[
                "--config",
                str(preset_file),
                "--trainer.logger",
                "false",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.enable_model_summary",
                "false",
                "--trainer.default_root_dir",
                str(Path(root_dir) / preset / time.strftime("%Y%m%d-%H%M%S")),
                *args,
            ],
            run=False,
        )
    finally:
        sys.argv = argv
    history = EpochHistory()
    cli.trainer.callbacks.append(history)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, history


def latest_checkpoint(preset: str, root_dir: str | Path = "runs/notebooks") -> Path | None:
    """The best checkpoint of the newest :func:`fit_preset` run of ``preset`` under ``root_dir``, or None."""
    found = sorted(Path(root_dir, preset).glob("**/checkpoints/best-*.ckpt"), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def load_classifier(path: str | Path) -> MNISTClassifier:
    """Load a checkpoint written by ``mnist-lightning fit`` into the classifier class that wrote it, in eval mode."""
    return load_checked_classifier(path)


def load_datamodule(path: str | Path | None = None, **settings: Any) -> MNISTDataModule:
    """A set-up :class:`MNISTDataModule`; given a checkpoint, with the data settings (split, seeds) it was trained with.

    ``settings`` (such as ``data_dir``) override the checkpoint's; the data folder is the one it was trained on
    while that still holds MNIST (as for ``mnist-lightning validate``), else the default.
    """
    stored = {}
    if path:
        info = inspect_checkpoint(path)
        stored = {**info.data_settings, "data_dir": data_dir_to_evaluate(info)}
    datamodule = MNISTDataModule(**{**stored, **settings})
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


@torch.no_grad()
def predict_probabilities(model: MNISTClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Class probabilities ``(N, 10)`` for uint8 images ``(N, 28, 28)``, scaled and normalized as in training."""
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(model.device).unsqueeze(1)
        chunks.append(model(normalize_uint8(batch)).softmax(dim=1).cpu())
    return torch.cat(chunks)


def plot_digits(
    images: Tensor,
    titles: Sequence[str],
    columns: int = 8,
    title: str | None = None,
    colors: Sequence[str] | None = None,
) -> Figure:
    """A grid of 28×28 images (uint8 or float, ``(N, 28, 28)``), each with its own title (and title color): the
    training media's :func:`~mnist_lightning.figures.digits.digit_grid`, dark ink on white, as a pyplot figure
    (``plt.show()`` shows it)."""
    return digit_grid(images, titles, colors, ncols=columns, title=title or "", cmap="gray_r", new_figure=plt.figure)
