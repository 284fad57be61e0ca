"""Every classifier, importable from ``mnist_lightning.models`` and selectable with ``--model ClassName``."""

from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.models.cnn import CNN, CNNClassifier
from mnist_lightning.models.mlp import MLP, MLPClassifier
from mnist_lightning.models.resnet import ResNet, ResNetClassifier
from mnist_lightning.models.speedrun import SpeedrunCNN, SpeedrunNet
from mnist_lightning.models.vit import TransformerEncoderClassifier, TransformerEncoderViT, ViT, ViTClassifier

__all__ = [
    "CNN",
    "MLP",
    "CNNClassifier",
    "MLPClassifier",
    "MNISTClassifier",
    "ResNet",
    "ResNetClassifier",
    "SpeedrunCNN",
    "SpeedrunNet",
    "TransformerEncoderClassifier",
    "TransformerEncoderViT",
    "ViT",
    "ViTClassifier",
]
