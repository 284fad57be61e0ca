"""What a model gets right and wrong on the test set: accuracy, per-class precision/recall/F1, the confusion matrix
and the most confident mistakes (torchmetrics computes the per-class numbers and the matrix)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from mnist_lightning.evaluation.calibration import bins_json, calibration
from mnist_lightning.models.base import NUM_CLASSES

MISTAKES_SHOWN = 24


def per_class(probs: Tensor, labels: Tensor) -> dict[str, list[float]]:
    """Precision, recall and F1 of every digit (torchmetrics), and how many test images each digit has."""
    args = (probs, labels, NUM_CLASSES)
    return {
        "precision": multiclass_precision(*args, average="none").tolist(),
        "recall": multiclass_recall(*args, average="none").tolist(),
        "f1": multiclass_f1_score(*args, average="none").tolist(),
        "support": torch.bincount(labels, minlength=NUM_CLASSES).tolist(),
    }


def confident_mistakes(probs: Tensor, labels: Tensor, count: int = MISTAKES_SHOWN) -> list[dict[str, Any]]:
    """The ``count`` wrong predictions with the highest probability: test index, true, predicted, probability."""
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return [
        {"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]), "probability": float(confidence[i])}
        for i in order
    ]


def summarize(probs: Tensor, labels: Tensor) -> dict[str, Any]:
    """Every number of the test probabilities ``probs``: accuracy, per class, confusion matrix (rows: true digit,
    columns: predicted), calibration (with its reliability bins) and the most confident mistakes."""
    predicted = probs.argmax(1)
    return {
        "test_accuracy": float((predicted == labels).float().mean()),
        "per_class": per_class(probs, labels),
        "confusion_matrix": multiclass_confusion_matrix(predicted, labels, NUM_CLASSES).tolist(),
        "calibration": {**calibration(probs, labels), "bins": bins_json(probs, labels)},
        "mistakes": confident_mistakes(probs, labels),
    }
