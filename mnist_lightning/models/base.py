"""The LightningModule every classifier shares: loss, metrics, optimizer and schedule."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.errors import ConfigError

NUM_CLASSES = 10
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
}


class SampleMean(Metric):
    """Mean of per-batch values weighted by batch size, kept on the device: no NaN check, no sync per update."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, count: int) -> None:
        # out of place: states reset inside inference mode (validate, test) are inference tensors
        self.total = self.total + value.detach().float() * count
        self.count = self.count + count

    def compute(self) -> Tensor:
        return self.total / self.count


class TrainingSums:
    """Loss and correct-prediction sums of the training batches of one epoch, on the device.

    A plain object, not a ``Metric``: a training step adds to two tensors in place (a few microseconds), and the
    epoch's totals go through the ``SampleMean`` metrics once, at the end of the epoch.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss: Tensor | None = None  # None until the first batch (``count == 0``)
        self.correct: Tensor | None = None
        self.count = 0

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Add one batch: its mean loss and its logits ``(B, 10)`` against the labels."""
        loss = loss.detach().float() * len(labels)
        correct = (logits.detach().argmax(dim=1) == labels).sum()
        if self.count:
            self.loss.add_(loss)
            self.correct.add_(correct)
        else:  # the first batch of the epoch: its tensors become the sums, on the device the model runs on
            self.loss, self.correct = loss, correct
        self.count += len(labels)

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "correct": self.correct, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.count = state["count"]
        self.loss, self.correct = (t.to(device) if t is not None else None for t in (state["loss"], state["correct"]))


class WeightAverage(nn.Module):
    """An exponential moving average of a network's weights and buffers, updated after every optimizer step.

    ``decay`` is the weight the average keeps per step; early steps use ``min(decay, (1 + t) / (10 + t))`` so the
    average is not dominated by the random initial weights (the same warm-up as TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``).
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.net = copy.deepcopy(net).requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    @torch.no_grad()
    def update(self, live: nn.Module, step: int) -> None:
        """Move the average towards ``live`` after optimizer step ``step`` (0-based)."""
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        averaged = self.net.state_dict(keep_vars=True)
        for name, value in live.state_dict(keep_vars=True).items():
            target = averaged[name]
            if target.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), weight)
            else:  # counters such as BatchNorm's num_batches_tracked
                target.copy_(value)


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


class MNISTClassifier(L.LightningModule):
    """Cross-entropy training of ``self.net`` (set by subclasses) with per-stage torchmetrics.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``test/loss`` and
    ``test/acc``. Validation and test losses never include label smoothing, so they are plain NLL.
    Metrics are accumulated on the device every step and logged once per epoch, so no step waits for the device.

    Args:
        optimizer: ``sgd``, ``adam``, ``adamw`` or ``adagrad``.
        lr: learning rate (the peak rate with ``onecycle``).
        momentum: SGD momentum.
        weight_decay: L2 penalty (decoupled for AdamW).
        scheduler: ``none``, ``cosine`` (per step, to zero), ``onecycle`` (per step) or ``exponential`` (the rate
            is multiplied by ``lr_decay`` every epoch, smoothly per step, after ``warmup_epochs``).
        lr_decay: per-epoch factor of the ``exponential`` schedule (0 < lr_decay <= 1).
        warmup_epochs: linear warm-up of the ``exponential`` schedule from ``lr / steps`` to ``lr`` (may be a
            fraction of an epoch).
        ema_decay: keep an exponential moving average of the weights (``0.999`` averages over about the last
            1,000 steps) and use it for validation, test, predict, serve and export: the checkpoint (chosen on
            ``val/acc`` of the averaged weights) holds both. ``null`` (the default) keeps no average.
        label_smoothing: label smoothing of the training loss.
        compile: ``torch.compile`` the network when a Trainer sets the model up (state_dict keys stay the same).
        channels_last: channels-last memory format for the network's weights and the image batches (CNNs).
    """

    net: nn.Module

    def __init__(
        self,
        *,
        optimizer: Literal["sgd", "adam", "adamw", "adagrad"] = "adam",
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        scheduler: Literal["none", "cosine", "onecycle", "exponential"] = "none",
        lr_decay: float = 0.95,
        warmup_epochs: float = 0.0,
        ema_decay: float | None = None,
        label_smoothing: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ConfigError(f"lr must be positive, got {lr}; try 0.001")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not 0 < lr_decay <= 1:
            raise ConfigError(f"model.lr_decay must be in (0, 1], got {lr_decay}; try 0.95")
        if not warmup_epochs >= 0:
            raise ConfigError(f"model.warmup_epochs must be 0 or more, got {warmup_epochs}; try 1")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ConfigError(f"model.ema_decay must be between 0 and 1 (or null for none), got {ema_decay}; try 0.999")
        self.save_hyperparameters()
        self.train_loss, self.val_loss, self.test_loss = SampleMean(), SampleMean(), SampleMean()
        self.train_acc = SampleMean()
        self.train_sums = TrainingSums()
        self._restored_sums: dict[str, Any] | None = None
        self._restored_best: float | None = None
        # validate_args=False: the argument checks call torch.unique, a device sync on every update
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.val_acc_best = MaxMetric()
        self.temperature = 1.0  # calibration of the probabilities, not a hyperparameter of training

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 10)`` for normalized images ``(B, 1, 28, 28)``; in eval mode from the averaged weights
        when ``ema_decay`` is set."""
        if self.hparams.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        if not self.training and self.weight_average is not None:
            return self.weight_average(images)
        return self.net(images)

    @property
    def weight_average(self) -> WeightAverage | None:
        """The moving average of the weights (``ema_decay``), or None."""
        return getattr(self, "ema", None)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.weight_average is not None:
            self.weight_average.update(self.net, self.trainer.global_step - 1)

    def configure_model(self) -> None:
        """Speed settings applied when a Trainer sets the model up (after any checkpoint hparams are known)."""
        if self.hparams.get("channels_last"):
            self.net.to(memory_format=torch.channels_last)
            if self.weight_average is not None:
                self.weight_average.to(memory_format=torch.channels_last)
        # nn.Module.compile compiles in place: the parameters keep their names, so checkpoints load anywhere
        if self.hparams.get("compile") and getattr(self.net, "_compiled_call_impl", None) is None:
            self.net.compile()

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name twice around every hook it calls, dozens of times per step, and
        # nn.Module.__setattr__ (which looks for parameters, buffers and submodules first) takes ~10x longer
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)
        # every subclass builds ``self.net`` in its constructor: the weight average starts as a copy of it, so
        # the averaged weights are part of the state_dict (checkpoints) of every classifier alike
        if name == "net" and self.hparams.get("ema_decay"):
            self.ema = WeightAverage(value, self.hparams.ema_decay)

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters of the network."""
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def on_train_start(self) -> None:
        # the sanity check must not count towards the best validation accuracy; a resumed run goes on from its best
        self.val_acc_best.reset()
        if self._restored_best is not None:
            self.val_acc_best.update(torch.tensor(self._restored_best, device=self.device))
            self._restored_best = None
        self.check_schedule_fits()
        self.check_average_precision()
        if self._restored_sums is not None:
            # Lightning resumes an epoch without calling on_train_epoch_start: the sums go on from the checkpoint's
            self.train_sums.load_state_dict(self._restored_sums, self.device)
            self._restored_sums = None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_sums.add(loss, logits, labels)
        return loss

    def on_train_epoch_start(self) -> None:
        self.train_sums.reset()

    def on_train_epoch_end(self) -> None:
        sums = self.train_sums
        if not sums.count:  # no training batch this epoch (resumed after its last one from an older checkpoint)
            return
        self.train_loss.update(sums.loss / sums.count, sums.count)
        self.train_acc.update(sums.correct / sums.count, sums.count)
        self.log("train/loss", self.train_loss, prog_bar=True)
        self.log("train/acc", self.train_acc)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a run resumed in the middle of this epoch then logs the mean over all of its batches
        checkpoint["train_sums"] = self.train_sums.state_dict()
        if self.val_acc_best.update_called:
            checkpoint["val_acc_best"] = float(self.val_acc_best.compute())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_sums = checkpoint.get("train_sums")
        self._restored_best = checkpoint.get("val_acc_best")
        schedulers = checkpoint.get("lr_schedulers") or [{}]
        shape = (schedulers[0].get("lr_lambdas") or [None])[0]  # LRSchedule's settings (exponential)
        self._planned_steps = (
            schedulers[0].get("total_steps")
            or schedulers[0].get("T_max")
            or (shape.get("total_steps") if isinstance(shape, dict) else None)
        )

    def check_average_precision(self) -> None:
        """Refuse a weight average kept in half precision (``bf16-true``, ``16-true``): its steps of ``1 - decay``
        are below half precision's resolution, so the average would hardly move from the initial weights."""
        average = self.weight_average
        if average is None:
            return
        dtype = next(average.parameters()).dtype
        if dtype in (torch.float16, torch.bfloat16):
            raise ConfigError(
                f"model.ema_decay needs float32 weights, but --trainer.precision keeps them in {dtype}: the average's "
                "small steps would round away; use --trainer.precision bf16-mixed (or 16-mixed), or drop ema_decay"
            )

    def check_schedule_fits(self) -> None:
        """Refuse, before the first step, a resumed run whose schedule was planned for a different length.

        One-cycle and cosine schedules are laid out over the run's total steps when it starts; a run resumed with
        another ``max_epochs`` would step past the end of its schedule (or stop before its end) hours later.
        """
        planned, self._planned_steps = getattr(self, "_planned_steps", None), None
        if self.hparams.get("scheduler", "none") == "none" or not planned:
            return
        trainer = self.trainer  # called from on_train_start: always attached
        wanted = trainer.estimated_stepping_batches
        if planned == wanted:
            return
        per_epoch = max(1, round(wanted / max(1, trainer.max_epochs))) if trainer.max_epochs > 0 else None
        epochs = f" (--trainer.max_epochs {round(planned / per_epoch)})" if per_epoch else ""
        raise ConfigError(
            f"this run's {self.hparams.scheduler} schedule was laid out for {planned} steps, but the settings now "
            f"ask for {wanted}; resume it with the settings it started with{epochs}, or, to train longer, "
            "start a new run with the longer schedule"
        )

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss_metric, acc_metric = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss_metric.update(F.cross_entropy(logits, labels), len(labels))
        acc_metric.update(logits, labels)

    def _log_evaluation(self, stage: str) -> None:
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=True)
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"), prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities ``(B, 10)`` (float32 also under mixed precision)."""
        return self.probabilities(batch[0])

    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities ``(B, 10)`` in float32: the softmax of the logits divided by ``self.temperature``
        (1 unless set; ``mnist-lightning report`` fits one on the validation split: ``--predictions.temperature``
        and ``serve --temperature`` apply it)."""
        return (self(images).float() / self.temperature).softmax(dim=1)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer the settings ask for, over all parameters (no schedule)."""
        hp = self.hparams
        kwargs: dict[str, Any] = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sgd":
            kwargs["momentum"] = hp.momentum
        # not the weight average (ema_decay): it follows the trained weights, it is not trained
        trained = [p for p in self.parameters() if p.requires_grad]
        return OPTIMIZERS[hp.optimizer](trained, **kwargs)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = self.build_optimizer()
        if hp.scheduler == "none":
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if hp.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=total)
        elif hp.scheduler == "exponential":
            max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
            per_epoch = max(1, math.ceil(total / max_epochs))
            warmup = round(hp.get("warmup_epochs", 0.0) * per_epoch)
            decay = hp.get("lr_decay", 0.95) ** (1 / per_epoch)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(total, warmup, decay))
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        # the name is the key LearningRateMonitor logs the rate under (the CLI adds it when a schedule is on)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }
