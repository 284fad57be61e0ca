"""What the CLI adds to the Trainer the user configured.

Callbacks that are command-line sections of their own (``--checkpoint.*``, ``--predictions.*``, ``--media.*``,
``--loss_guard.*``); a progress bar that redraws less often, the learning-rate monitor for a schedule, W&B weight
histograms, a model summary with real FLOPs, and atomic checkpoint writes, each unless the user configured one; no
logger where its run would stay empty; and no prediction writer outside ``predict``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser

from mnist_lightning.callbacks import (
    AtomicCheckpointIO,
    FiniteLossGuard,
    MediaLogger,
    ModelSummaryWithFlops,
    PredictionWriter,
    ResumableCheckpoint,
)
from mnist_lightning.tracking import AutoWandbLogger, WatchHistograms

# redrawing the bar every step costs more than a small MLP's step; a configured progress bar callback wins
PROGRESS_BAR_REFRESH_STEPS = 20
CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/acc",
    "checkpoint.mode": "max",
    "checkpoint.save_last": True,
    "checkpoint.filename": "best-epoch{epoch:02d}-val_acc{val/acc:.4f}",
    "checkpoint.auto_insert_metric_name": False,
}


def add_callback_arguments(parser: LightningArgumentParser) -> None:
    """The callbacks every run has, as sections of the command line (``--checkpoint.monitor``, ...)."""
    parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
    parser.set_defaults(CHECKPOINT_DEFAULTS)
    parser.add_lightning_class_args(PredictionWriter, "predictions")
    parser.add_lightning_class_args(MediaLogger, "media")
    parser.add_lightning_class_args(FiniteLossGuard, "loss_guard")


def trainer_additions(
    trainer_config: dict[str, Any], model: LightningModule, subcommand: str | None, evaluates_ensemble: bool
) -> dict[str, Any]:
    """Trainer arguments that complete ``trainer_config`` (the instantiated ``--trainer`` section)."""
    additions: dict[str, Any] = {
        "callbacks": added_callbacks(trainer_config, model, subcommand),
        "plugins": as_list(trainer_config.get("plugins")),
    }
    if any(isinstance(c, ModelSummaryWithFlops) for c in additions["callbacks"]):
        additions["enable_model_summary"] = False  # Lightning's default summary is replaced: no line about skipping it
    if not any(isinstance(p, AtomicCheckpointIO) for p in additions["plugins"]):
        additions["plugins"].append(AtomicCheckpointIO())
    if subcommand == "predict":
        additions["logger"] = False  # predictions go to a CSV file; a W&B run would stay empty
    elif evaluates_ensemble:
        # the figures of an ensemble are not those of the run that trained its first member: no W&B run
        additions["logger"] = False
    return additions


def added_callbacks(trainer_config: dict[str, Any], model: LightningModule, subcommand: str | None) -> list[Callback]:
    """The configured callbacks, and the ones this project adds when the user configured none of their kind."""
    callbacks = as_list(trainer_config.get("callbacks"))
    if trainer_config.get("enable_progress_bar") is not False and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
    # Lightning's summary prints FLOPs only for a model with an example input, else "0 Total Flops"
    if trainer_config.get("enable_model_summary") is not False and not any(
        isinstance(c, ModelSummary) for c in callbacks
    ):
        callbacks.append(ModelSummaryWithFlops())
    scheduled = model.hparams.get("scheduler", "none") != "none"
    monitored = any(isinstance(c, LearningRateMonitor) for c in callbacks)
    if scheduled and trainer_config.get("logger") and not monitored:
        callbacks.append(LearningRateMonitor(logging_interval="step"))  # the schedule on the run page
    for logger in as_list(trainer_config.get("logger")):
        if isinstance(logger, AutoWandbLogger) and logger.watch_mode and subcommand in (None, "fit"):
            callbacks.append(WatchHistograms(logger))
    return callbacks


def drop_prediction_writer(trainer: Trainer) -> None:
    """Lightning calls every hook of every callback on every step: the writer only works in ``predict``."""
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, PredictionWriter)]


def as_list(value: Any) -> list[Any]:
    """A setting that may be one item, a list of them, or nothing, as a new list."""
    if not value:
        return []
    return list(value) if isinstance(value, list) else [value]
