"""The LightningModule every classifier shares: loss, metrics, optimizer and schedule."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

NUM_CLASSES = 10
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
}


class MNISTClassifier(L.LightningModule):
    """Cross-entropy training of ``self.net`` (set by subclasses) with per-stage torchmetrics.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``test/loss`` and
    ``test/acc``. Validation and test losses never include label smoothing, so they are plain NLL.

    Args:
        optimizer: ``sgd``, ``adam``, ``adamw`` or ``adagrad``.
        lr: learning rate (the peak rate with ``onecycle``).
        momentum: SGD momentum.
        weight_decay: L2 penalty (decoupled for AdamW).
        scheduler: ``none``, ``cosine`` (per step, to zero) or ``onecycle`` (per step).
        label_smoothing: label smoothing of the training loss.
    """

    net: nn.Module

    def __init__(
        self,
        *,
        optimizer: Literal["sgd", "adam", "adamw", "adagrad"] = "adam",
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        scheduler: Literal["none", "cosine", "onecycle"] = "none",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}; try 0.001")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        self.save_hyperparameters()
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.val_acc_best = MaxMetric()

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 10)`` for normalized images ``(B, 1, 28, 28)``."""
        return self.net(images)

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters of the network."""
        return sum(p.numel() for p in self.net.parameters() if p.requires_grad)

    def on_train_start(self) -> None:
        # the sanity check must not count towards the best validation accuracy
        self.val_acc_best.reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_loss(loss.detach())
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        loss_metric, acc_metric = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss_metric(F.cross_entropy(logits, labels), weight=len(labels))
        acc_metric(logits, labels)
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc_metric, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities ``(B, 10)``."""
        return self(batch[0]).softmax(dim=1)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        kwargs: dict[str, Any] = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sgd":
            kwargs["momentum"] = hp.momentum
        optimizer = OPTIMIZERS[hp.optimizer](self.parameters(), **kwargs)
        if hp.scheduler == "none":
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if hp.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=total)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
