"""What the report knows about one model: its test probabilities and the numbers measured from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from mnist_lightning.checkpoints import CheckpointInfo


@dataclass
class ModelReport:
    """The numbers of one checkpoint (or of the ensemble, whose ``info`` is None)."""

    label: str
    slug: str  # file-name-safe label, used in the figure names
    info: CheckpointInfo | None
    test_probs: Tensor  # (10000, 10) on the CPU
    metrics: dict[str, Any] = field(default_factory=dict)
    robustness: dict[str, list[float]] = field(default_factory=dict)
    scaled_probs: Tensor | None = None  # test probabilities after the fitted temperature (checkpoints only)
