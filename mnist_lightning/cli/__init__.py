"""The ``mnist-lightning`` command line: :class:`MNISTLightningCLI` (LightningCLI with this project's defaults) and
the presets it reads. The console command itself, with its table of commands, is :mod:`mnist_lightning.cli.main`."""

from mnist_lightning.cli.lightning_cli import MNISTLightningCLI
from mnist_lightning.cli.presets import config_dir, preset_names

__all__ = ["MNISTLightningCLI", "config_dir", "preset_names"]
