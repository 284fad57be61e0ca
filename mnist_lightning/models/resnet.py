"""Residual networks: a wide 5×5 stem, one stage of residual blocks per resolution (28, 14, 7, 4 pixels), global
average pooling and one linear layer. The ``resnet_frontier`` preset's family."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mnist_lightning.errors import ConfigError
from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier


def conv_bn(inputs: int, outputs: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Conv2d without bias (BatchNorm's shift replaces it), 'same' padding, then BatchNorm."""
    conv = nn.Conv2d(inputs, outputs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(outputs))


class ResidualBlock(nn.Module):
    """``ReLU(x' + BN(conv3(ReLU(BN(conv3(x))))))``: two 3×3 convolutions around a shortcut.

    With ``stride`` 2 the first convolution halves the resolution (28 → 14 → 7 → 4: 'same' padding rounds up), and
    the shortcut becomes a strided 1×1 convolution with BatchNorm whenever the resolution or the width changes.
    The last BatchNorm's scale starts at zero, so every block starts as the identity and the deep network trains
    from its first step like a shallow one.
    """

    def __init__(self, inputs: int, outputs: int, stride: int = 1) -> None:
        super().__init__()
        self.first = conv_bn(inputs, outputs, 3, stride)
        self.second = conv_bn(outputs, outputs, 3)
        nn.init.zeros_(self.second[1].weight)
        self.shortcut: nn.Module = (
            conv_bn(inputs, outputs, 1, stride) if stride != 1 or inputs != outputs else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.second(self.relu(self.first(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem (``stem_kernel``×``stem_kernel`` conv to ``stem_channels``, BN, ReLU) at 28 pixels, then one stage per
    entry of ``widths``: ``blocks[i]`` residual blocks of ``widths[i]`` channels, every stage after the first
    starting with a stride-2 block; global average pooling; one linear layer to the 10 classes.

    Args:
        stem_channels: output channels of the stem convolution.
        stem_kernel: kernel size of the stem convolution (odd).
        widths: channels of each stage; four stages run at 28, 14, 7 and 4 pixels.
        blocks: residual blocks in each stage (as many entries as ``widths``).
    """

    def __init__(self, *, stem_channels: int, stem_kernel: int, widths: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        check_shape(stem_channels, stem_kernel, widths, blocks)
        self.stem = nn.Sequential(conv_bn(1, stem_channels, stem_kernel), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        channels = stem_channels
        for index, (width, count) in enumerate(zip(widths, blocks)):
            layers = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(ResidualBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 10)`` for images ``(B, 1, 28, 28)``."""
        return self.head(self.pool(self.stages(self.stem(images))))


def check_shape(stem_channels: int, stem_kernel: int, widths: Sequence[int], blocks: Sequence[int]) -> None:
    """Refuse, in one line each, a shape the network cannot be built with."""
    if not widths or len(widths) != len(blocks):
        raise ConfigError(
            f"model.widths and model.blocks need one entry per stage each, got {list(widths)} and {list(blocks)}; "
            "try widths [128, 128, 256, 512] and blocks [1, 1, 1, 1]"
        )
    if any(int(w) < 1 for w in [stem_channels, *widths]) or any(int(b) < 1 for b in blocks):
        raise ConfigError(
            f"model.stem_channels, model.widths and model.blocks must be positive, got {stem_channels}, "
            f"{list(widths)} and {list(blocks)}"
        )
    if stem_kernel < 1 or stem_kernel % 2 == 0:
        raise ConfigError(f"model.stem_kernel must be an odd number such as 5, got {stem_kernel}")


class ResNetClassifier(MNISTClassifier):
    """A residual CNN (see :class:`ResNet`); the defaults are the ``resnet_frontier`` preset's network.

    Args:
        stem_channels: output channels of the stem convolution.
        stem_kernel: kernel size of the stem convolution (odd).
        widths: channels of each stage (28, 14, 7 and 4 pixels for four stages).
        blocks: residual blocks in each stage.
        **kwargs: optimizer, schedule and speed settings of :class:`MNISTClassifier`.
    """

    def __init__(
        self,
        *,
        stem_channels: int = 128,
        stem_kernel: int = 5,
        widths: list[int] | None = None,
        blocks: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        widths = [128, 128, 256, 512] if widths is None else [int(w) for w in widths]
        blocks = [1] * len(widths) if blocks is None else [int(b) for b in blocks]
        self.net = ResNet(stem_channels=stem_channels, stem_kernel=stem_kernel, widths=widths, blocks=blocks)
