"""Batches sliced from tensors on the device: the seeded, sharded batch order of an epoch and the resumable loader
that yields uint8 image batches by index slicing (no per-image Python, no worker processes)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import Tensor


@dataclass(eq=False)
class ShardedBatchOrder:
    """Batches of indices for one process and one epoch: seeded by (seed, epoch), split across ranks.

    Every global batch of ``batch_size * world_size`` indices is dealt round-robin to the ranks, so all ranks
    get the same number of batches and together see every index exactly once per epoch.
    """

    num_samples: int
    batch_size: int
    shuffle: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = field(default=0, init=False)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(self.num_samples, global_batch)
        # a last global batch too small to give every rank one sample is merged into the one before it
        return full + (1 if rest >= self.world_size or full == 0 else 0)

    def batches(self) -> list[Tensor]:
        """The index tensors of this rank's batches for the current epoch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        global_batch = self.batch_size * self.world_size
        bounds = [min(i * global_batch, self.num_samples) for i in range(len(self))] + [self.num_samples]
        return [order[lo:hi][self.rank :: self.world_size] for lo, hi in itertools.pairwise(bounds)]


class TensorBatchLoader:
    """Iterates (uint8 images ``(B, 1, 28, 28)``, labels) batches by index slicing one tensor: no per-image Python.

    Lightning finds ``sampler.set_epoch`` on it and reseeds the shuffle every epoch. With ``progress`` (batches of
    the current epoch already trained on, and batches in the epoch) it is resumable: ``state_dict`` goes into
    checkpoints and ``load_state_dict`` makes the next iteration start where the checkpoint left off, in the same
    batch order.
    """

    batch_sampler = None  # Lightning looks for it; the batches come from ``sampler``

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        sampler: ShardedBatchOrder,
        progress: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.sampler = sampler
        self.progress = progress
        self.skip = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        skip, self.skip = self.skip, 0
        batches = self.sampler.batches()[skip:]
        if self.images.device.type != "cpu" and batches:
            # one copy of the epoch's order to the device instead of one small copy per batch
            sizes = [len(index) for index in batches]
            batches = torch.cat(batches).to(self.images.device, non_blocking=True).split(sizes)
        for index in batches:
            yield self.images[index].unsqueeze(1), self.labels[index]

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were trained on (saved in checkpoints by Lightning)."""
        done, total = self.progress() if self.progress else (0, len(self))
        if done >= total:  # a finished epoch: Lightning continues with the next one on this loader's iterator
            return {"epoch": self.sampler.epoch + 1, "batches_done": 0}
        return {"epoch": self.sampler.epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration gives the rest of the saved epoch, in that epoch's order."""
        self.sampler.set_epoch(state["epoch"])
        self.skip = state["batches_done"]


def trained_batches(trainer: L.Trainer) -> tuple[int, int]:
    """Batches of the current training epoch whose optimizer step is done (what a checkpoint taken now has trained
    on), and the batches in the epoch: the ``progress`` of a training :class:`TensorBatchLoader`.

    Lightning keeps no public count of this, and the loader cannot count it itself: Lightning fetches one batch ahead
    of the one it trains on, and a Ctrl+C inside a training step leaves that batch transferred but not trained on
    (Lightning's own restored counters then repeat it, so the loader must too). So this reads the fit loop's batch
    progress, a Lightning internal; the canary tests/test_data_canaries.py
    (``test_a_resumed_epoch_skips_exactly_the_batches_trained_on``) fails when Lightning stops providing or updating it.
    """
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed, int(trainer.num_training_batches)
