"""How far a model's probabilities can be trusted: calibration errors, reliability bins and temperature scaling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from mnist_lightning.models.base import NUM_CLASSES

CALIBRATION_BINS = 15  # torchmetrics' default, and the reliability diagram's bins


def fit_temperature(logits: Tensor, labels: Tensor, iterations: int = 50) -> float:
    """The temperature T that minimises the NLL of ``logits / T`` (LBFGS on log T, so T stays positive)."""
    logits, labels = logits.detach().clone().float(), labels.detach().clone()  # not inference tensors: autograd
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Expected and maximum calibration error (torchmetrics, 15 bins) and the negative log-likelihood."""
    return {
        "ece": float(multiclass_calibration_error(probs, labels, NUM_CLASSES, n_bins=CALIBRATION_BINS, norm="l1")),
        "mce": float(multiclass_calibration_error(probs, labels, NUM_CLASSES, n_bins=CALIBRATION_BINS, norm="max")),
        "nll": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
    }


def reliability_bins(probs: Tensor, labels: Tensor, bins: int = CALIBRATION_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per confidence bin: mean confidence, accuracy and count (the bins torchmetrics' ECE uses).

    torchmetrics computes the ECE from these bins but has no public function that returns them, hence this one.
    """
    confidence, predicted = probs.max(1)
    index = (confidence * bins).long().clamp_(max=bins - 1)
    count = torch.bincount(index, minlength=bins).float()
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins).float()
    hit_sum = torch.bincount(index, weights=(predicted == labels).double(), minlength=bins).float()
    safe = count.clamp_min(1)
    return conf_sum / safe, hit_sum / safe, count
