"""Checks and preparations just before Lightning runs a command: refusals that would otherwise come late, after the
model, data and logger are set up (a traceback, a W&B run resumed for nothing, a crash in every other process)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule, Trainer

from mnist_lightning.callbacks import PredictionWriter
from mnist_lightning.checkpoints import CheckpointInfo
from mnist_lightning.errors import ConfigError
from mnist_lightning.outputs import ensure_writable_file


def check_resumed_epochs(checkpoint: CheckpointInfo | None, max_epochs: int | None) -> None:
    """Refuse to continue a run with a ``max_epochs`` it has already passed.

    Lightning raises this only after the model, data and logger are set up (a traceback, and a W&B run resumed
    for nothing); the checkpoint already says how far the run got.
    """
    epoch = checkpoint.epoch if checkpoint is not None else None
    if epoch is None or max_epochs is None or max_epochs < 0:
        return
    epochs_done = epoch + 1  # a checkpoint records the (0-based) epoch it was written in
    if epochs_done <= max_epochs:
        return
    raise ConfigError(
        f"checkpoint {checkpoint.path} has already trained {epochs_done} epochs, more than "
        f"--trainer.max_epochs {max_epochs}: to train on, give --trainer.max_epochs above {epochs_done}; "
        "to evaluate it, use validate or test"
    )


def prepare_data_before_launch(trainer: Trainer, datamodule: LightningDataModule) -> None:
    """With several processes, fetch and check the data in rank 0 before Lightning starts the others.

    A missing or damaged file is then one error line from one process, instead of an error in rank 0 and a
    "connection closed by peer" crash in every other rank.
    """
    if trainer.world_size > 1 and trainer.is_global_zero:
        datamodule.prepare_data()


def check_predictions_file(trainer: Trainer) -> Path | None:
    """``predict``: the predictions file can be written (before any image is classified); its path, if any."""
    writer = next((c for c in trainer.callbacks if isinstance(c, PredictionWriter)), None)
    if writer is None:
        return None
    writer.output_path = ensure_writable_file(
        writer.resolve(trainer.default_root_dir), "the predictions file (--predictions.output)"
    )
    return writer.output_path
