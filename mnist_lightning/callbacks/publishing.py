"""Where a training figure goes: a PNG under ``<run dir>/media/`` and an image in every W&B logger's run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from mnist_lightning.figures import save_png
from mnist_lightning.runs import run_directory


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers (none when logging is off or goes elsewhere)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def publish(trainer: L.Trainer, key: str, fig: Figure, filename: str, caption: str = "") -> Path:
    """Write ``fig`` to ``<run dir>/media/<filename>`` and log that file as the image ``key`` to every W&B logger,
    at the trainer's step. Returns the file."""
    path = save_png(fig, Path(run_directory(trainer)) / "media" / filename)
    loggers = wandb_loggers(trainer)
    if loggers:
        import wandb

        for logger in loggers:
            # one wandb.Image, not WandbLogger.log_image: that logs a list, which W&B stores and shows as a gallery
            # ("images/separated") where each figure here is one image ("image-file"; tests/test_tracking.py)
            logger.log_metrics({key: wandb.Image(str(path), caption=caption or None)}, step=trainer.global_step)
    return path
