"""The LightningModule every classifier shares: the loss, per-stage metrics and the hooks that tie the optimizer,
schedule (:mod:`.schedules`), metric state (:mod:`.metrics`) and weight average (:mod:`.averaging`) to training."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.models import schedules
from mnist_lightning.models.averaging import WeightAverage, check_decay
from mnist_lightning.models.metrics import SampleMean, TrainingSums
from mnist_lightning.threads import share_threads

NUM_CLASSES = 10


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
    # whether evaluation on the CPU runs faster at a batch of 1,000 than at the training batch (data.eval_batch_size
    # "auto"): not for convolutional and attention networks, whose activations then leave the CPU's caches
    # (measured: data/settings.py); MLPs say yes
    large_eval_batches_on_cpu: bool = False

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
        schedules.check_settings(optimizer=optimizer, lr=lr, lr_decay=lr_decay, warmup_epochs=warmup_epochs)
        check_decay(ema_decay)
        self.save_hyperparameters()
        self.train_loss, self.val_loss, self.test_loss = SampleMean(), SampleMean(), SampleMean()
        self.train_acc = SampleMean()
        self.train_sums = TrainingSums()
        self._restored: dict[str, Any] = {}  # from the checkpoint, for on_train_start (see on_load_checkpoint)
        # validate_args=False: the argument checks call torch.unique, a device sync on every update
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.val_acc_best = MaxMetric()
        self.temperature = 1.0  # calibration of the probabilities, not a hyperparameter of training
        self._compiled = False

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name twice around every hook it calls, dozens of times per step, and
        # nn.Module.__setattr__ (which looks for parameters, buffers and submodules first) takes ~7x longer
        # (0.6 against 4 µs); tests/test_train_canaries.py fails if Lightning stops setting it
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)
        # every subclass builds ``self.net`` in its constructor: the weight average starts as a copy of it, so
        # the averaged weights are part of the state_dict (checkpoints) of every classifier alike
        if name == "net" and self.hparams.get("ema_decay"):
            self.ema = WeightAverage(value, self.hparams.ema_decay)

    @property
    def weight_average(self) -> WeightAverage | None:
        """The moving average of the weights (``ema_decay``), or None."""
        return getattr(self, "ema", None)

    @property
    def predicting_net(self) -> nn.Module:
        """The network predictions come from: in eval mode the averaged one when ``ema_decay`` is set, else ``net``."""
        if not self.training and self.weight_average is not None:
            return self.weight_average.net
        return self.net

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters of the network."""
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 10)`` for normalized images ``(B, 1, 28, 28)``; in eval mode from the averaged weights
        when ``ema_decay`` is set."""
        if self.hparams.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        return self.predicting_net(images)

    def configure_model(self) -> None:
        """Speed settings applied when a Trainer sets the model up (after any checkpoint hparams are known)."""
        if self.hparams.get("channels_last"):
            self.net.to(memory_format=torch.channels_last)
            if self.weight_average is not None:
                self.weight_average.to(memory_format=torch.channels_last)
        # nn.Module.compile compiles in place: the parameters keep their names, so checkpoints load anywhere
        if self.hparams.get("compile") and not self._compiled:
            self.net.compile()
            self._compiled = True

    def setup(self, stage: str) -> None:
        # several processes on this machine (DDP ranks): each gets its share of the cores as torch threads (a
        # user's OMP_NUM_THREADS wins), or they take every core each and spin waiting on each other. Lightning 2.6's
        # DDP launcher does the same in every rank (its private _set_num_threads_if_needed, also for ranks torchrun
        # or SLURM started); this keeps it so whatever launcher runs (tests/test_cpu_threads.py)
        if self.trainer.num_devices > 1 and self.trainer.world_size > 1:
            share_threads(self.trainer.num_devices)

    def on_train_start(self) -> None:
        restored, self._restored = self._restored, {}
        # the sanity check must not count towards the best validation accuracy; a resumed run goes on from its best
        self.val_acc_best.reset()
        if restored.get("val_acc_best") is not None:
            self.val_acc_best.update(torch.tensor(restored["val_acc_best"], device=self.device))
        schedules.check_schedule_fits(
            self.hparams.get("scheduler", "none"), restored.get("planned_steps"), self.trainer
        )
        if self.weight_average is not None:
            self.weight_average.check_precision()
        if restored.get("train_sums") is not None:
            # Lightning resumes an epoch without calling on_train_epoch_start: the sums go on from the checkpoint's
            self.train_sums.load_state_dict(restored["train_sums"], self.device)

    def on_train_epoch_start(self) -> None:
        self.train_sums.reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_sums.add(loss, logits, labels)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # once per optimizer step (not per batch under gradient accumulation), before any on_train_batch_end: a
        # checkpoint saved there holds the average of this step
        if self.weight_average is not None:
            self.weight_average.update(self.net, self.trainer.global_step)

    def on_train_epoch_end(self) -> None:
        sums = self.train_sums
        if not sums.count:  # no training batch this epoch (resumed after its last one from an older checkpoint)
            return
        self.train_loss.update(sums.loss / sums.count, sums.count)
        self.train_acc.update(sums.correct / sums.count, sums.count)
        self.log("train/loss", self.train_loss, prog_bar=True)
        self.log("train/acc", self.train_acc)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer the settings ask for, over the trained parameters (not the weight average's; no schedule)."""
        return schedules.build_optimizer([p for p in self.parameters() if p.requires_grad], self.hparams)

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        if self.hparams.scheduler == "none":  # no Trainer needed
            return optimizer
        return schedules.with_schedule(optimizer, self.hparams, self.trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a run resumed in the middle of this epoch then logs the mean over all of its batches
        checkpoint["train_sums"] = self.train_sums.state_dict()
        if self.val_acc_best.update_called:
            checkpoint["val_acc_best"] = float(self.val_acc_best.compute())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored = {
            "train_sums": checkpoint.get("train_sums"),
            "val_acc_best": checkpoint.get("val_acc_best"),
            "planned_steps": schedules.planned_steps(checkpoint),
        }

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
        (1 unless set; ``mnist-lightning report`` fits one on the validation split and stores it with the
        checkpoint, and predict, serve, export and ensembles set it from there: see
        :mod:`mnist_lightning.evaluation.temperature`)."""
        return (self(images).float() / self.temperature).softmax(dim=1)
