"""A test-only callback that records which training images each process really received, by their pixels.

Used by tests/test_ddp.py through ``--trainer.callbacks+=sample_recorder.SeenSampleRecorder`` in a subprocess
(tests/ is put on its PYTHONPATH). Each batch the model is about to train on is turned back into uint8 pixels
and looked up in the training split, so the record does not trust the loader's own bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from mnist_lightning.data import MEAN, STD


def to_pixels(images: Tensor) -> Tensor:
    """uint8 ``(B, 28, 28)`` pixels of a batch that is either raw uint8 or scaled and normalized floats."""
    if images.dtype != torch.uint8:
        images = ((images.float() * STD + MEAN) * 255).round().clamp(0, 255).to(torch.uint8)
    return images.reshape(-1, 28, 28).cpu()


class SeenSampleRecorder(Callback):
    """Writes ``<folder>/rank<R>-epoch<E>.json``: the training-split positions of every image this rank trained on.

    Args:
        folder: where the per-rank files go.
    """

    def __init__(self, folder: str = "seen") -> None:
        self.folder = folder
        self.position_of: dict[bytes, int] = {}
        self.seen: list[int] = []
        self.batch_sizes: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.position_of:
            images, _ = trainer.datamodule.splits["train"]
            self.position_of = {image.numpy().tobytes(): i for i, image in enumerate(images)}
            assert len(self.position_of) == len(images), "duplicate training images: pixels do not identify samples"
        self.seen, self.batch_sizes = [], []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        pixels = to_pixels(batch[0])
        self.seen.extend(self.position_of[image.numpy().tobytes()] for image in pixels)
        self.batch_sizes.append(len(pixels))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "epoch": trainer.current_epoch,
            "split_size": len(self.position_of),
            "batch_sizes": self.batch_sizes,
            "positions": self.seen,
        }
        path = Path(self.folder) / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
