"""Never train on silently after the training loss turned NaN or infinite."""

from __future__ import annotations

import math
from typing import Any, NoReturn

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mnist_lightning.errors import ConfigError, MNISTLightningError


class NonFiniteLossError(MNISTLightningError, ValueError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Stops training with :class:`NonFiniteLossError` once the training loss is NaN or infinite.

    The losses stay on the device and are checked together every ``check_every_n_steps`` steps and at the end of
    each epoch (every step on the CPU, where checking costs nothing): one synchronization per check, and the
    message still names the exact step where the loss first went bad.

    Args:
        check_every_n_steps: how many steps the losses are collected on an accelerator before they are checked.
    """

    def __init__(self, *, check_every_n_steps: int = 50) -> None:
        if check_every_n_steps < 1:
            raise ConfigError(f"check_every_n_steps must be at least 1, got {check_every_n_steps}; try 50")
        self.check_every_n_steps = check_every_n_steps
        self.losses: list[torch.Tensor] = []
        self.where: list[tuple[int, int, int]] = []  # (global step, epoch, batch index) of each collected loss

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        where = (trainer.global_step, trainer.current_epoch, batch_idx)
        if loss.device.type == "cpu":
            # reading a CPU loss costs nothing; collecting and stacking it would cost ~40 µs a step
            value = loss.item()
            if not math.isfinite(value):
                self.stop(trainer, value, where)
            return
        self.losses.append(loss.detach().float().reshape(()))
        self.where.append(where)
        if len(self.losses) >= self.check_every_n_steps:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Raise :class:`NonFiniteLossError` if one of the losses collected since the last check is not finite."""
        if not self.losses:
            return
        losses, where = torch.stack(self.losses), self.where
        self.losses, self.where = [], []
        finite = torch.isfinite(losses)
        if bool(finite.all()):
            return
        first = int((~finite).nonzero()[0, 0])
        self.stop(trainer, losses[first].item(), where[first])

    @staticmethod
    def stop(trainer: L.Trainer, value: float, where: tuple[int, int, int]) -> NoReturn:
        """Raise :class:`NonFiniteLossError` for the loss ``value`` seen at (global step, epoch, batch index)."""
        step, epoch, batch_idx = where
        lr = getattr(trainer.lightning_module.hparams, "lr", None)
        hint = f"lower the learning rate (model.lr={lr:g})" if lr is not None else "lower the learning rate"
        raise NonFiniteLossError(
            f"training loss became {value} at step {step} (epoch {epoch}, batch {batch_idx}) and "
            f"training was stopped; {hint}, or add gradient clipping (--trainer.gradient_clip_val 1.0)"
        )
