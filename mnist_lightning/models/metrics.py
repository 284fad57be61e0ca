"""The training-time metric state of :class:`~mnist_lightning.models.base.MNISTClassifier`: a batch-size-weighted
mean metric and the per-epoch sums of the training batches (kept on the device, no synchronization per step)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


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

    def mean_loss(self) -> float | None:
        """The mean training loss of the batches so far (a device synchronization), or None before the first."""
        return float(self.loss / self.count) if self.count else None

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "correct": self.correct, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.count = state["count"]
        self.loss, self.correct = (t.to(device) if t is not None else None for t in (state["loss"], state["correct"]))
