"""Multilayer perceptrons: from a linear classifier to wide, regularized MLPs."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from mnist_lightning.errors import ConfigError
from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "none": nn.Identity,
}


class MLP(nn.Sequential):
    """Flatten 784 → hidden sizes (activation, dropout after each) → 10 logits; no hidden sizes is linear."""

    def __init__(
        self, hidden_sizes: list[int], activation: str = "relu", dropout: float = 0.0, batch_norm: bool = False
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            if activation != "none":
                layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, NUM_CLASSES))
        super().__init__(*layers)


class MLPClassifier(MNISTClassifier):
    """An MLP on flattened 28×28 images.

    Args:
        hidden_sizes: width of each hidden layer; ``[]`` is a linear classifier.
        activation: ``relu``, ``gelu``, ``tanh``, ``sigmoid`` or ``none`` (a purely linear stack).
        dropout: dropout after each hidden layer.
        batch_norm: BatchNorm after each hidden linear layer.
        **kwargs: optimizer and schedule settings of :class:`MNISTClassifier`.
    """

    large_eval_batches_on_cpu = True  # batch 1,000 tested an MLP 3.9× as fast as batch 64 on the 2-core CPU

    def __init__(
        self,
        hidden_sizes: list[int] | None = None,
        activation: Literal["relu", "gelu", "tanh", "sigmoid", "none"] = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        sizes = [128, 64] if hidden_sizes is None else list(hidden_sizes)
        self.net = MLP(sizes, activation, dropout, batch_norm)
