"""Every classifier, importable from ``mnist_lightning.models`` and selectable with ``--model ClassName``."""

from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.models.mlp import MLP, MLPClassifier
from mnist_lightning.models.speedrun import SpeedrunCNN, SpeedrunNet

__all__ = ["MLP", "MLPClassifier", "MNISTClassifier", "SpeedrunCNN", "SpeedrunNet"]
