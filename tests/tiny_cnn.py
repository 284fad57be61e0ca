"""A small CNN the handwriting tests train once per session (any MNISTClassifier works with those features)."""

from __future__ import annotations

from typing import Any

from torch import nn

from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier


class TinyCNNClassifier(MNISTClassifier):
    """conv 1→8 k5, ReLU, maxpool 2; conv 8→16 k5, ReLU, maxpool 2; linear 256 → 10."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256, NUM_CLASSES),
        )
