"""Optimizers and learning-rate schedules of the classifiers: building them from the model's settings, and
refusing a resumed run whose schedule was laid out for another length."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch

from mnist_lightning.errors import ConfigError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
}


class LRSchedule:
    """The learning-rate factor of step ``t`` for ``LambdaLR``: linear warm-up, then exponential decay per step.

    A plain object (not a lambda), so ``LambdaLR.state_dict`` keeps its settings in the checkpoint.
    """

    def __init__(self, total_steps: int, warmup_steps: int, decay_per_step: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.decay_per_step = decay_per_step

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.decay_per_step ** (step - self.warmup_steps)


def check_settings(*, optimizer: str, lr: float, lr_decay: float, warmup_epochs: float) -> None:
    """Refuse, in one line each, optimizer and schedule settings that cannot train."""
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}; try 0.001")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not 0 < lr_decay <= 1:
        raise ConfigError(f"model.lr_decay must be in (0, 1], got {lr_decay}; try 0.95")
    if not warmup_epochs >= 0:
        raise ConfigError(f"model.warmup_epochs must be 0 or more, got {warmup_epochs}; try 1")


def build_optimizer(parameters: Iterable[torch.nn.Parameter], settings: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer ``settings`` (a classifier's hparams) ask for, over ``parameters`` (no schedule)."""
    kwargs: dict[str, Any] = {"lr": settings["lr"], "weight_decay": settings["weight_decay"]}
    if settings["optimizer"] == "sgd":
        kwargs["momentum"] = settings["momentum"]
    return OPTIMIZERS[settings["optimizer"]](parameters, **kwargs)


def with_schedule(optimizer: torch.optim.Optimizer, settings: Mapping[str, Any], trainer: L.Trainer) -> Any:
    """What ``configure_optimizers`` returns with a schedule: ``optimizer`` and the per-step schedule the settings
    ask for (``cosine``, ``onecycle`` or ``exponential``), laid out over the trainer's total steps."""
    scheduler_name = settings["scheduler"]
    total = trainer.estimated_stepping_batches
    if scheduler_name == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings["lr"], total_steps=total)
    elif scheduler_name == "exponential":
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        per_epoch = max(1, math.ceil(total / max_epochs))
        warmup = round(settings.get("warmup_epochs", 0.0) * per_epoch)
        decay = settings.get("lr_decay", 0.95) ** (1 / per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(total, warmup, decay))
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    # the name is the key LearningRateMonitor logs the rate under (the CLI adds it when a schedule is on)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}


def planned_steps(checkpoint: Mapping[str, Any]) -> int | None:
    """The total steps the schedule saved in ``checkpoint`` was laid out for (one-cycle, cosine, exponential)."""
    schedulers = checkpoint.get("lr_schedulers") or [{}]
    shape = (schedulers[0].get("lr_lambdas") or [None])[0]  # LRSchedule's settings (exponential)
    return (
        schedulers[0].get("total_steps")
        or schedulers[0].get("T_max")
        or (shape.get("total_steps") if isinstance(shape, dict) else None)
    )


def check_schedule_fits(scheduler_name: str, planned: int | None, trainer: L.Trainer) -> None:
    """Refuse, before the first step, a resumed run whose schedule was planned for a different length.

    One-cycle and cosine schedules are laid out over the run's total steps when it starts; a run resumed with
    another ``max_epochs`` would step past the end of its schedule (or stop before its end) hours later.
    """
    if scheduler_name == "none" or not planned:
        return
    wanted = trainer.estimated_stepping_batches
    if planned == wanted:
        return
    per_epoch = max(1, round(wanted / max(1, trainer.max_epochs))) if trainer.max_epochs > 0 else None
    epochs = f" (--trainer.max_epochs {round(planned / per_epoch)})" if per_epoch else ""
    raise ConfigError(
        f"this run's {scheduler_name} schedule was laid out for {planned} steps, but the settings now "
        f"ask for {wanted}; resume it with the settings it started with{epochs}, or, to train longer, "
        "start a new run with the longer schedule"
    )
