"""Canary of the one Lightning internal the data package reads: the fit loop's batch progress
(``trainer.fit_loop.epoch_loop.batch_progress.current.processed``, read by
:func:`mnist_lightning.data.loader.trained_batches`), which tells the training loader how many batches of the epoch
a checkpoint has trained on. A real short fit on MNIST is stopped in the middle of its second epoch, with a
checkpoint, and resumed from it: the resumed epoch must go on with exactly the first batch not trained on.

If Lightning stops providing or updating that counter, the resumed run repeats or skips batches (or fails) and this
test fails: then find Lightning's new way before raising the pin in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mnist_lightning import MLPClassifier
from mnist_lightning.data import MNISTDataModule

BATCHES = 8  # training batches per epoch
STOP_EPOCH, STOP_BATCH = 1, 3  # where the interrupted run stops: the middle of the second epoch


class Stop(Exception):
    """Ends the interrupted fit (what a crash or a kill does) once its checkpoint is written."""


class BatchLabels(L.Callback):
    """Keeps the labels of every training batch, which tell the (shuffled) batches apart."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.seen.append(batch[1].clone())


class CheckpointAndStop(L.Callback):
    """At batch ``STOP_BATCH`` of epoch ``STOP_EPOCH`` saves a checkpoint and raises :class:`Stop`: after the batch's
    optimizer step (``when="after_step"``, as the periodic ``last.ckpt`` is written) or inside its training step,
    before the optimizer step (``when="in_step"``, as Ctrl+C mostly lands)."""

    def __init__(self, path: Path, when: str) -> None:
        self.path, self.when = path, when
        self.batch_idx = -1
        self.loader_state: dict[str, int] | None = None

    def _stop_here(self, trainer: L.Trainer) -> None:
        if (trainer.current_epoch, self.batch_idx) == (STOP_EPOCH, STOP_BATCH):
            trainer.save_checkpoint(self.path)
            self.loader_state = trainer.train_dataloader.state_dict()
            raise Stop

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.when == "in_step":
            self._stop_here(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.when == "after_step":
            self._stop_here(trainer)


def fit(mnist_dir: Path, root: Path, *callbacks: L.Callback, ckpt_path: Path | None = None) -> None:
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_train_batches=BATCHES,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
    )
    datamodule = MNISTDataModule(data_dir=str(mnist_dir), batch_size=32)
    trainer.fit(MLPClassifier(hidden_sizes=[16]), datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[torch.Tensor]:
    labels = BatchLabels()
    fit(mnist_dir, tmp_path_factory.mktemp("whole"), labels)
    assert len(labels.seen) == 2 * BATCHES
    return labels.seen


@pytest.mark.parametrize(("when", "trained_on"), [("after_step", STOP_BATCH + 1), ("in_step", STOP_BATCH)])
def test_a_resumed_epoch_skips_exactly_the_batches_trained_on(
    mnist_dir: Path, tmp_path: Path, uninterrupted: list[torch.Tensor], when: str, trained_on: int
) -> None:
    checkpoint = tmp_path / "stopped.ckpt"
    before, stop = BatchLabels(), CheckpointAndStop(checkpoint, when)
    with pytest.raises(Stop):
        fit(mnist_dir, tmp_path, before, stop)
    assert stop.loader_state == {"epoch": STOP_EPOCH, "batches_done": trained_on}

    after = BatchLabels()
    fit(mnist_dir, tmp_path, after, ckpt_path=checkpoint)
    done = STOP_EPOCH * BATCHES + trained_on  # batches of the whole run the checkpoint has trained on
    assert len(after.seen) == 2 * BATCHES - done
    assert all(torch.equal(a, b) for a, b in zip(after.seen, uninterrupted[done:])), "the resumed epoch is off"
    assert all(torch.equal(a, b) for a, b in zip(before.seen, uninterrupted))  # the same order before the stop
