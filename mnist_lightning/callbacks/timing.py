"""Wall-clock timing of training that waits for the device, for the speedrun and the benchmarks."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


def synchronize(device: torch.device) -> None:
    """Wait until every queued kernel on ``device`` has finished (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class TrainTimer(L.Callback):
    """Measures the training loop itself (first batch to last, validation included; set-up excluded).

    ``train_seconds`` holds the whole training time, ``epoch_seconds`` the training batches of each epoch
    (validation excluded). At the end it prints one line and gives ``time/train_s`` to the loggers.
    """

    def __init__(self) -> None:
        self.train_seconds: float | None = None
        self.epoch_seconds: list[float] = []
        self._train_start = 0.0
        self._epoch_start = 0.0

    def _now(self, trainer: L.Trainer) -> float:
        synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_seconds = []
        self._train_start = self._now(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._now(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        # the last training batch of the epoch: validation (if any) starts after this hook
        if batch_idx + 1 >= trainer.num_training_batches:
            self.epoch_seconds.append(self._now(trainer) - self._epoch_start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_seconds = self._now(trainer) - self._train_start
        steps = trainer.global_step
        rank_zero_info(f"Training took {self.train_seconds:.3f} s ({steps} steps, set-up excluded)")
        for logger in trainer.loggers:
            logger.log_metrics({"time/train_s": self.train_seconds}, step=steps)
