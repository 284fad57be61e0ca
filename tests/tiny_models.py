"""Small classifiers for the handwriting tests (any MNISTClassifier works with predict on images, serve, export)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier


class TinyCNNClassifier(MNISTClassifier):
    """conv 1→8 k5, ReLU, maxpool 2; conv 8→16 k5, ReLU, maxpool 2; linear 256 → 10 (trained once per session)."""

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


class TinyAttentionNet(nn.Module):
    """7×7 patches → 16 tokens and a class token → self-attention blocks → linear on the class token.

    Has ``attention_maps(images)`` like the ViTs: per block, weights ``(batch, heads, 17, 17)``.
    """

    def __init__(self, dim: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.embed = nn.Linear(49, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(blocks))
        self.head = nn.Linear(dim, NUM_CLASSES)

    def _run(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        patches = images.unfold(2, 7, 7).unfold(3, 7, 7).reshape(len(images), 16, 49)
        tokens = torch.cat([self.cls_token.expand(len(images), -1, -1), self.embed(patches)], dim=1) + self.position
        maps = []
        for block in self.blocks:
            update, weights = block(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
            tokens = tokens + update
            maps.append(weights)
        return self.head(tokens[:, 0]), maps

    def forward(self, images: Tensor) -> Tensor:
        return self._run(images)[0]

    def attention_maps(self, images: Tensor) -> list[Tensor]:
        return self._run(images)[1]


class TinyAttentionClassifier(MNISTClassifier):
    """:class:`TinyAttentionNet` as a classifier (untrained in the tests: only its attention view is checked)."""

    def __init__(self, dim: int = 32, heads: int = 4, blocks: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = TinyAttentionNet(dim, heads, blocks)
