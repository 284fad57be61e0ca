"""The speedrun network: the smallest CNN we found that reaches 99% test accuracy in about one epoch."""

from __future__ import annotations

from typing import Any

from torch import nn

from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier


class SpeedrunNet(nn.Sequential):
    """conv 1→c1 k5, BN, ReLU, maxpool 2; conv c1→c2 k3, BN, ReLU, maxpool 2; flatten c2·25 → hidden → ReLU → 10."""

    def __init__(self, channels: tuple[int, int] = (24, 48), hidden: int = 256) -> None:
        first, second = channels
        super().__init__(
            nn.Conv2d(1, first, kernel_size=5, bias=False),  # 28 → 24
            nn.BatchNorm2d(first),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 24 → 12
            nn.Conv2d(first, second, kernel_size=3, bias=False),  # 12 → 10
            nn.BatchNorm2d(second),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 10 → 5
            nn.Flatten(),
            nn.Linear(second * 5 * 5, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, NUM_CLASSES),
        )


class SpeedrunCNN(MNISTClassifier):
    """The network of the ``speedrun`` preset: few, cheap steps to 99% (batch norm lets the one-cycle peak be high).

    Args:
        channels: output channels of the two convolutions.
        hidden: width of the hidden fully connected layer.
        **kwargs: optimizer, schedule and speed settings of :class:`MNISTClassifier`.
    """

    def __init__(self, channels: tuple[int, int] = (24, 48), hidden: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = SpeedrunNet(tuple(channels), hidden)  # type: ignore[arg-type]
