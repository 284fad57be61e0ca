"""MNIST classifiers with PyTorch Lightning, LightningCLI and Weights & Biases."""

from mnist_lightning import interrupts

if interrupts.is_console_command():  # first: Ctrl+C while the command imports torch is one line, not a traceback
    interrupts.guard_startup()

from mnist_lightning.checkpoints import load_classifier
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.models import MLPClassifier, MNISTClassifier

__all__ = ["MLPClassifier", "MNISTClassifier", "MNISTDataModule", "load_classifier"]
__version__ = "0.1.0"
