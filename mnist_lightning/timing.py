"""The class path ``mnist_lightning.timing.TrainTimer`` that presets and users' YAML files name in
``trainer.callbacks``; the callback lives in :mod:`mnist_lightning.callbacks.timing`."""

from mnist_lightning.callbacks.timing import TrainTimer, synchronize

__all__ = ["TrainTimer", "synchronize"]
