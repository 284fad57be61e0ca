"""Classifiers for the tune tests, named by class path in their search spaces (also from the console script and
the worker processes it starts: :func:`digit_helpers.python_path` puts this folder on their ``PYTHONPATH``).

Each is the linear model (``MLPClassifier`` without hidden layers in the ``linear`` preset) plus one behaviour.
A trial's Trainer has a checkpoint callback and the dry run of ``tune``'s checks has none: the behaviours that
must not fire in the dry run look at that.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from mnist_lightning.models import MLPClassifier

# the metric PeakEarlyClassifier logs at each validation: it peaks at the second validation (the one that ends epoch
# 0 when there are two per epoch), which a reporter that reports once per epoch (step = epoch) never sees
PEAKS = (0.5, 1.0, 0.25, 0.2)
CRASH_ENV = "TUNE_TEST_CRASH"  # set: CrashingClassifier raises at its second training step
BARRIER_ENV = "TUNE_TEST_BARRIER"  # a folder: BarrierClassifier waits there until two processes train at once


def in_trial(model: MLPClassifier) -> bool:
    return model.trainer.checkpoint_callback is not None


class PeakEarlyClassifier(MLPClassifier):
    """Also logs ``val/peak``: :data:`PEAKS`, one value per validation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validations = 0

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking:
            return
        self.log("val/peak", PEAKS[min(self.validations, len(PEAKS) - 1)])
        self.validations += 1


class CrashingClassifier(MLPClassifier):
    """A bug that shows only in training: with ``TUNE_TEST_CRASH`` set, the second training step of a trial raises."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if os.environ.get(CRASH_ENV) and in_trial(self) and self.global_step >= 1:
            raise RuntimeError("a bug in the training step")
        return super().training_step(batch, batch_idx)


class BarrierClassifier(MLPClassifier):
    """Records this process in ``$TUNE_TEST_BARRIER`` when a trial starts and waits (at most 300 s) until two
    processes have: two trials of two tune processes then surely train at the same time."""

    def on_train_start(self) -> None:
        super().on_train_start()
        folder = Path(os.environ[BARRIER_ENV])
        if not in_trial(self):
            return
        (folder / f"{os.getpid()}").touch()
        deadline = time.time() + 300
        while len(list(folder.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
