"""The console script's old target (``mnist_lightning.entry:main``); the command is :mod:`mnist_lightning.cli.main`."""

from mnist_lightning.cli.main import main as main
