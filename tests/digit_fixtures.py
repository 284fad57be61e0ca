"""Fixtures shared by the handwriting and serve tests: a trained tiny CNN and the MNIST test set.

Test modules load it with ``pytest_plugins = ["digit_fixtures"]``, so that its session fixtures exist once per
session (importing a fixture into two modules would make two of them, and train the CNN twice). Plain helpers
live in digit_helpers.py: a test module importing this plugin itself would keep pytest from rewriting its asserts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import MNIST_DIR, run_cli
from digit_helpers import python_path

from mnist_lightning.checkpoints import find_last
from mnist_lightning.data import DATA_DIR_ENV, load_split


@pytest.fixture(scope="session")
def cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TinyCNNClassifier trained for one epoch on the real MNIST by ``mnist-lightning fit`` (about 97%)."""
    folder = tmp_path_factory.mktemp("tiny_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv(DATA_DIR_ENV, str(MNIST_DIR))
        mp.setenv("PYTHONPATH", python_path())
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("WANDB_MODE", "disabled")
        run_cli(
            "fit",
            "--model",
            "tiny_models.TinyCNNClassifier",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        )
    return find_last(folder / "runs")


@pytest.fixture(scope="session")
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_split(MNIST_DIR, train=False)
    return images.numpy(), labels.numpy()
