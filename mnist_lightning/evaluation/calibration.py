"""How far a model's probabilities can be trusted: calibration errors, reliability bins and temperature scaling.

The ECE, the MCE, the reliability diagram and its bin counts all come from :func:`reliability_bins`, one binning.
Its bins are torchmetrics' (``bucketize`` on the same ``linspace`` boundaries, so a confidence on a boundary goes to
the same bin) with one difference: torchmetrics gives a confidence of exactly 1.0 a sixteenth bin of its own, while
here it belongs to the last bin, [14/15, 1]. Many MNIST confidences are exactly 1.0 in float32 (a well trained
model's softmax saturates), so torchmetrics' numbers would describe bins the diagram does not draw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


def bin_index(confidence: Tensor, bins: int = CALIBRATION_BINS) -> Tensor:
    """The bin of every confidence: ``[k/bins, (k+1)/bins)``, the last bin closed at 1.0.

    The boundaries and ``bucketize`` are torchmetrics' own (float32 ``linspace``), so a confidence exactly on a
    boundary lands where torchmetrics puts it; only 1.0 differs (clamped into the last bin instead of a bin of its
    own).
    """
    boundaries = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)
    return (torch.bucketize(confidence, boundaries, right=True) - 1).clamp_(0, bins - 1)


def reliability_bins(probs: Tensor, labels: Tensor, bins: int = CALIBRATION_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per confidence bin: mean confidence, accuracy and count (float64; an empty bin has 0, 0, 0)."""
    confidence, predicted = probs.max(1)
    index = bin_index(confidence, bins).cpu()
    confidence, hits = confidence.double().cpu(), (predicted == labels).double().cpu()
    count = torch.bincount(index, minlength=bins).double()
    safe = count.clamp_min(1)
    mean_confidence = torch.bincount(index, weights=confidence, minlength=bins) / safe
    accuracy = torch.bincount(index, weights=hits, minlength=bins) / safe
    return mean_confidence, accuracy, count


def calibration(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Expected and maximum calibration error over :data:`CALIBRATION_BINS` bins (those of
    :func:`reliability_bins`) and the negative log-likelihood."""
    confidence, accuracy, count = reliability_bins(probs, labels)
    gaps = (accuracy - confidence).abs()
    return {
        "ece": float((gaps * count).sum() / count.sum()),
        "mce": float(gaps[count > 0].max()),
        "nll": float(F.nll_loss(probs.float().clamp_min(1e-12).log(), labels)),
    }


def bins_json(probs: Tensor, labels: Tensor) -> dict[str, list[float] | list[int]]:
    """The reliability bins as plain lists for ``report.json``: count, mean confidence and accuracy per bin."""
    confidence, accuracy, count = reliability_bins(probs, labels)
    return {
        "count": [int(c) for c in count.tolist()],
        "confidence": [round(c, 6) for c in confidence.tolist()],
        "accuracy": [round(a, 6) for a in accuracy.tolist()],
    }
