"""speed.py's references beside ``fit``: the hand-written loop (the floor) and bare Lightning (Lightning's own cost).

:class:`PlainLoop` trains the same network with the same optimizer over the same tensors with nothing but PyTorch;
:func:`bare_training` trains it by a Trainer with no callbacks, logger, checkpointing or progress bar and a module
with only a ``training_step``. :class:`PlainEpochAfterEach` interleaves plain epochs with a Trainer's, so that a
machine that speeds up or slows down meanwhile affects both alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mnist_lightning.callbacks import TrainTimer, synchronize
from mnist_lightning.data import MEAN, STD, MNISTDataModule
from mnist_lightning.data.transforms import augment_uint8
from mnist_lightning.models.base import MNISTClassifier


class BareClassifier(L.LightningModule):
    """The least a LightningModule can be: cross-entropy of ``net`` and one optimizer, no metrics, no hooks.

    Trained by a Trainer with no callbacks, logger, checkpointing or progress bar, it measures what Lightning's
    own loop costs per step (the floor for anything trained by a Trainer), apart from this project's additions.
    """

    def __init__(self, source: MNISTClassifier) -> None:
        super().__init__()
        self.net = source.net
        self.build_optimizer = source.build_optimizer  # the same optimizer and settings, over the same parameters

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.build_optimizer()


def bare_training(
    source: MNISTClassifier, dm: MNISTDataModule, trainer: L.Trainer, *callbacks: L.Callback
) -> list[float]:
    """Seconds per epoch of ``BareClassifier(source)`` trained on ``dm`` by a bare Trainer with the device,
    precision, epochs and batch limit of ``trainer``."""
    timer = TrainTimer()
    bare_trainer = L.Trainer(
        accelerator=trainer.accelerator,
        devices=1,
        precision=trainer.precision,
        max_epochs=trainer.max_epochs,
        limit_train_batches=trainer.limit_train_batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, *callbacks],
    )
    bare_trainer.fit(BareClassifier(source), datamodule=dm)
    return timer.epoch_seconds


def plain_normalize(images: Tensor) -> Tensor:
    """uint8 images ``(N, 28, 28)`` as the normalized float batch ``(N, 1, 28, 28)`` the networks take."""
    return (images.unsqueeze(1).float() / 255 - MEAN) / STD


def training_input(dm: MNISTDataModule) -> Callable[[Tensor], Tensor]:
    """What the plain loop makes of a uint8 training batch: the data module's augmentation when it augments (the
    same random transform ``fit`` pays for: the same data), else plain normalization."""
    if not dm.augment:
        return plain_normalize
    settings = (dm.rotation, dm.translate, dm.scale, dm.elastic_alpha, dm.elastic_sigma)
    return lambda images: augment_uint8(images.unsqueeze(1), *settings)


class PlainLoop:
    """The floor: shuffle, slice, normalize, forward, cross-entropy, backward, step, over tensors on the device."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        precision: str = "32-true",
        prepare: Callable[[Tensor], Tensor] = plain_normalize,
        channels_last: bool = False,
    ) -> None:
        self.net, self.optimizer = net, optimizer
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.precision = precision  # the Trainer's: the plain loop follows bf16-mixed with the same autocast
        self.prepare = prepare  # uint8 batch -> model input (normalized, augmented when fit augments)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epochs_done = 0  # seeds each epoch's shuffle

    @torch.enable_grad()
    def train_epoch(self) -> float:
        """Train one epoch; its seconds."""
        images, labels, device = self.images, self.labels, self.images.device
        self.net.train()
        synchronize(device)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.epochs_done)
        order = torch.randperm(len(labels), generator=generator).to(device)
        for first in range(0, len(labels), self.batch_size):
            index = order[first : first + self.batch_size]
            with autocast(device, self.precision):
                inputs = self.prepare(images[index]).contiguous(memory_format=self.memory_format)
                loss = F.cross_entropy(self.net(inputs), labels[index])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        synchronize(device)
        self.epochs_done += 1
        return time.perf_counter() - start


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast Lightning's ``bf16-mixed`` runs the forward pass in; nothing for other precisions."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PlainEpochAfterEach(L.Callback):
    """Runs one epoch of ``plain`` after every training epoch of the Trainer it is attached to.

    Trainer epochs and plain epochs then alternate, so a machine that speeds up or slows down meanwhile (a shared
    CPU does) affects both alike.
    """

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.epoch_seconds: list[float] = []  # of the plain epochs run by this callback

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_seconds.append(self.plain.train_epoch())


@torch.no_grad()
def plain_inference(net: nn.Module, images: Tensor, batch_size: int, channels_last: bool = False) -> float:
    """Images per second of a no-grad evaluation pass."""
    net.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    synchronize(images.device)
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        net(plain_normalize(images[first : first + batch_size]).contiguous(memory_format=memory_format)).argmax(dim=1)
    synchronize(images.device)
    return len(images) / (time.perf_counter() - start)
