"""Convolutional networks: LeNet-style and two-convolution CNNs, and a compact VGG-style CNN, from one builder."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import torch
from torch import nn

from mnist_lightning.errors import ConfigError
from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier

CONV_BLOCK_KEYS = {"channels", "kernel_size", "padding", "batch_norm", "pool", "dropout"}


class ConvBlock(TypedDict, total=False):
    """One convolution block: Conv2d → BatchNorm (optional) → ReLU → MaxPool (optional) → Dropout (optional).

    Keys: ``channels`` (output channels, required), ``kernel_size`` (3), ``padding`` (0), ``batch_norm`` (false),
    ``pool`` (max-pool kernel and stride; 0 for none), ``dropout`` (0 for none).
    """

    channels: int
    kernel_size: int
    padding: int
    batch_norm: bool
    pool: int
    dropout: float


class CNN(nn.Module):
    """Convolution blocks, flatten, then a fully connected head: hidden sizes (activation after each) → 10 logits.

    Args:
        conv_blocks: the convolution blocks, in order (see :class:`ConvBlock`).
        hidden_sizes: widths of the hidden fully connected layers.
        head_activation: ``relu`` between the fully connected layers, or ``none``.
        head_dropout: dropout after the last hidden fully connected layer.
    """

    def __init__(
        self,
        *,
        conv_blocks: list[ConvBlock],
        hidden_sizes: list[int],
        head_activation: Literal["relu", "none"] = "relu",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not conv_blocks:
            raise ConfigError("conv_blocks is empty; give at least one block such as {channels: 32, kernel_size: 3}")
        if head_activation not in ("relu", "none"):
            raise ConfigError(f"unknown head_activation {head_activation!r}; choose relu or none")
        layers: list[nn.Module] = []
        channels = 1
        for i, block in enumerate(conv_blocks):
            unknown = set(block) - CONV_BLOCK_KEYS
            if unknown or "channels" not in block:
                problem = f"unknown keys {sorted(unknown)}" if unknown else "no 'channels'"
                raise ConfigError(f"conv_blocks[{i}] has {problem}; allowed keys: {', '.join(sorted(CONV_BLOCK_KEYS))}")
            out = int(block["channels"])
            layers.append(nn.Conv2d(channels, out, block.get("kernel_size", 3), padding=block.get("padding", 0)))
            if block.get("batch_norm", False):
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            if block.get("pool", 0) > 1:
                layers.append(nn.MaxPool2d(block["pool"]))
            if block.get("dropout", 0) > 0:
                layers.append(nn.Dropout(block["dropout"]))
            channels = out
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            width = self.features(torch.zeros(1, 1, 28, 28)).numel()
        head: list[nn.Module] = [nn.Flatten()]
        for i, size in enumerate(hidden_sizes):
            head.append(nn.Linear(width, size))
            if head_activation == "relu":
                head.append(nn.ReLU())
            if head_dropout > 0 and i == len(hidden_sizes) - 1:
                head.append(nn.Dropout(head_dropout))
            width = size
        head.append(nn.Linear(width, NUM_CLASSES))
        self.head = nn.Sequential(*head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 10)`` for images ``(B, 1, 28, 28)``."""
        return self.head(self.features(images))


class CNNClassifier(MNISTClassifier):
    """A CNN built from convolution blocks and a fully connected head (see :class:`CNN`).

    The defaults are the ``lenet5`` preset.

    Args:
        conv_blocks: convolution blocks, each a mapping with ``channels`` and optionally ``kernel_size``,
            ``padding``, ``batch_norm``, ``pool`` and ``dropout``.
        hidden_sizes: widths of the hidden fully connected layers after flattening.
        head_activation: ``relu`` after each hidden fully connected layer, or ``none``.
        head_dropout: dropout after the last hidden fully connected layer.
        **kwargs: optimizer and schedule settings of :class:`MNISTClassifier`.
    """

    def __init__(
        self,
        *,
        conv_blocks: list[ConvBlock] | None = None,
        hidden_sizes: list[int] | None = None,
        head_activation: Literal["relu", "none"] = "relu",
        head_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if conv_blocks is None:
            conv_blocks = [
                {"channels": 6, "kernel_size": 5, "batch_norm": True, "pool": 2},
                {"channels": 16, "kernel_size": 5, "batch_norm": True, "pool": 2},
            ]
        sizes = [120, 84] if hidden_sizes is None else list(hidden_sizes)
        self.net = CNN(
            conv_blocks=conv_blocks, hidden_sizes=sizes, head_activation=head_activation, head_dropout=head_dropout
        )
