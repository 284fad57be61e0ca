"""A callback that sends this process a signal at a chosen moment of ``fit``, for the console-script tests of Ctrl+C
and SIGTERM (``--trainer.callbacks+=train_signal_at.SignalAt`` with this folder on ``PYTHONPATH``).

``SIGNAL_AT`` names the moment, ``SIGNAL_SENT`` the signal (``SIGINT`` or ``SIGTERM``):

- ``init``: while the command builds its objects, before anything is written;
- ``setup``: after the data is loaded and the W&B run started, before the sanity check;
- ``sanity``: during the sanity check's first validation batch;
- ``train_step:N``: inside optimizer step N (0-based: after the backward pass, before the weights change);
- ``batch:N``: as training batch N (0-based, counted in the epoch) starts;
- ``validation``: during the first validation batch after training started;
- ``checkpoint``: while the first checkpoint file is being written (from inside ``torch.save``).
"""

from __future__ import annotations

import collections
import os
import signal
from typing import Any

import lightning as L


def send() -> None:
    os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL_SENT", "SIGINT")))


class SignalsWhenWritten:
    """Sends the signal when ``torch.save`` pickles it, that is while the checkpoint file is being written; it
    is stored as an empty ``OrderedDict`` (which ``weights_only`` loading accepts)."""

    sent = False

    def __reduce__(self) -> tuple[Any, ...]:
        if not SignalsWhenWritten.sent:
            SignalsWhenWritten.sent = True
            send()
        return (collections.OrderedDict, ())


class SignalAt(L.Callback):
    def __init__(self) -> None:
        self.moment, _, number = os.environ.get("SIGNAL_AT", "").partition(":")
        self.step = int(number or 0)
        if self.moment == "init":
            send()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.moment == "setup":
            send()

    def on_validation_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.moment == "sanity" and trainer.sanity_checking:
            send()
        if self.moment == "validation" and not trainer.sanity_checking:
            self.moment = "sent"
            send()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, index: int) -> None:
        if self.moment == "batch" and index == self.step:
            send()

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: Any) -> None:
        if self.moment == "train_step" and trainer.global_step == self.step:
            send()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.moment == "checkpoint":
            checkpoint["signal_at"] = SignalsWhenWritten()
