"""The learning curves of a fit (train and validation loss, validation accuracy against the step), drawn at its end
and kept in its checkpoints, so the curves of a resumed run start at the beginning of the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from mnist_lightning.callbacks.publishing import publish
from mnist_lightning.figures.training import learning_curves_figure

CURVES = ("train/loss", "val/loss", "val/acc")


class LearningCurves(Callback):
    """Records ``train/loss``, ``val/loss`` and ``val/acc`` at each epoch's step and, with ``draw``, writes
    ``learning_curves.png`` (and logs it to W&B) at the end of fit.

    The model logs an epoch's ``train/loss`` in its own ``on_train_epoch_end``, which runs after the callbacks'
    hooks: the value of an epoch is read when the next epoch starts, and at the end of fit for the last one.
    """

    def __init__(self, draw: bool = True) -> None:
        self.draw = draw
        self.curves: dict[str, list[tuple[int, float]]] = {key: [] for key in CURVES}
        self.written: list[Path] = []
        # training batches run so far in this epoch (restored with the checkpoint: a run resumed after an epoch's
        # last batch runs none of its batches again, yet that epoch is complete)
        self.epoch_batches_done = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_batches_done = 0
        self._record_train_loss(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        batch_idx = args[-1]  # (outputs, batch, batch_idx)
        self.epoch_batches_done = batch_idx + 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        for key in ("val/loss", "val/acc"):
            if key in trainer.callback_metrics:
                self.curves[key].append((trainer.global_step, float(trainer.callback_metrics[key])))

    def _record_train_loss(self, trainer: L.Trainer) -> None:
        points = self.curves["train/loss"]
        value = trainer.callback_metrics.get("train/loss")
        if value is not None and (not points or points[-1][0] != trainer.global_step):
            points.append((trainer.global_step, float(value)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_train_loss(trainer)
        if self.draw and trainer.is_global_zero and any(self.curves.values()):
            fig = learning_curves_figure(self.curves)
            caption = "loss and validation accuracy"
            self.written.append(publish(trainer, "media/learning_curves", fig, "learning_curves.png", caption))

    # --- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "curves": {key: [list(point) for point in points] for key, points in self.curves.items()},
            "epoch_batches_done": self.epoch_batches_done,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, points in state_dict.get("curves", {}).items():
            self.curves[key] = [(int(step), float(value)) for step, value in points]
        self.epoch_batches_done = int(state_dict.get("epoch_batches_done", 0))  # absent before 0.2

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.complete_saved_state(checkpoint.get("callbacks", {}).get(self.state_key), trainer, pl_module)

    def complete_saved_state(self, state: Any, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Add to a checkpoint's copy of the curves (``state``, from :meth:`state_dict`) the training loss of an
        epoch that is not recorded yet.

        The checkpoint of an epoch's end is written after its validation, before the model logs the epoch's
        train/loss (in its on_train_epoch_end): that point is not in the curves yet, and a run resumed from this
        checkpoint would never see it logged. The checkpoint's copy of the curves gets it from the model's sums.
        """
        point = self._unlogged_train_point(trainer, pl_module)
        if point is not None and isinstance(state, dict):
            state["curves"]["train/loss"].append(list(point))

    def _unlogged_train_point(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[int, float] | None:
        """(step, mean training loss) of an epoch whose batches have all run but whose loss is not recorded yet.

        Read from ``pl_module.train_sums`` (the per-epoch sums of :class:`MNISTClassifier`; other modules get no
        such point); under DDP it is this rank's mean, close to the all-rank mean the model logs.
        """
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return None
        if self.epoch_batches_done < trainer.num_training_batches:
            return None  # a checkpoint in the middle of an epoch: the resumed run logs the whole epoch's loss
        points = self.curves["train/loss"]
        if points and points[-1][0] == trainer.global_step:
            return None
        sums = getattr(pl_module, "train_sums", None)
        mean = sums.mean_loss() if sums is not None else None
        return None if mean is None else (trainer.global_step, mean)
