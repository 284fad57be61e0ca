"""The moving average of a classifier's weights (``model.ema_decay``), kept by torch's ``AveragedModel``.

The classifier owns the average (it is a submodule, saved in every checkpoint beside the trained weights), so
everything that evaluates a classifier without a Trainer (serve, export, report, ensembles) predicts with it too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from mnist_lightning.errors import ConfigError


def check_decay(decay: float | None) -> None:
    """Refuse, in one line, a decay that is not strictly between 0 and 1 (``None`` keeps no average)."""
    if decay is not None and not 0 < decay < 1:
        raise ConfigError(f"model.ema_decay must be between 0 and 1 (or null for none), got {decay}; try 0.999")


class WarmedUpDecay:
    """``AveragedModel``'s ``multi_avg_fn``: an exponential moving average whose early steps weigh the live values
    more, ``min(decay, (1 + t) / (10 + t))`` at step ``t``, so the average is not dominated by the random initial
    weights (the warm-up of TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``).

    A class rather than a closure, so a model holding it can be pickled (``ddp_spawn``).
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay

    @torch.no_grad()
    def __call__(self, averaged: list[Tensor], live: list[Tensor], num_averaged: Tensor) -> None:
        # AveragedModel calls this once per group of one dtype
        if not averaged[0].is_floating_point():  # counters such as BatchNorm's num_batches_tracked
            for target, value in zip(averaged, live):
                target.copy_(value)
            return
        # num_averaged counts the starting copy: step t is num_averaged - 1, and the weight of the live values,
        # 1 - min(decay, (1 + t) / (10 + t)), is max(1 - decay, 9 / (num_averaged + 9)), computed where the count is
        weight = (9 / (num_averaged.to(averaged[0].dtype) + 9)).clamp(min=1 - self.decay)
        for target, value in zip(averaged, live):
            target.lerp_(value.to(target.dtype), weight)


def _save_as_net(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    # the averaged copy is saved under "net." as checkpoints have held it since 0.1 (AveragedModel calls it
    # "module."): old and new checkpoints have one layout, and the CLI's check of a checkpoint against the model
    # compares the same keys
    for key in [key for key in state_dict if key.startswith(f"{prefix}module.")]:
        state_dict[f"{prefix}net.{key[len(prefix) + len('module.') :]}"] = state_dict.pop(key)


def _load_from_net(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for key in [key for key in state_dict if key.startswith(f"{prefix}net.")]:
        state_dict[f"{prefix}module.{key[len(prefix) + len('net.') :]}"] = state_dict.pop(key)


class WeightAverage(AveragedModel):
    """An exponential moving average of ``net``'s weights and buffers (BatchNorm statistics included), updated by
    :meth:`update` after every optimizer step with :class:`WarmedUpDecay`; ``forward`` runs the averaged copy.

    Its step count (``n_averaged``) is set from the trainer's step at every update rather than saved, so a
    checkpoint holds just the averaged network, as ``<prefix>net.*``.

    On CUDA, ``AveragedModel.update_parameters`` reads that count on the host (``bool(self.n_averaged == 0)``): one
    device synchronization per optimizer step, which the hand-written average of 0.1 did not have. Not measured
    yet (no GPU so far); ``benchmarks/gpu.py``'s fit against the plain loop, with ``--model.ema_decay``, shows it.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        super().__init__(net, multi_avg_fn=WarmedUpDecay(decay), use_buffers=True)
        self.decay = decay
        self.requires_grad_(False)  # it follows the trained weights, it is not trained
        # the starting copy counts as the first model averaged, so the first update keeps 1/10 of it (the warm-up)
        # where AveragedModel's own first update would replace it by the live weights
        self.register_buffer("n_averaged", torch.ones_like(self.n_averaged), persistent=False)
        self.register_state_dict_post_hook(_save_as_net)
        self.register_load_state_dict_pre_hook(_load_from_net)

    @property
    def net(self) -> nn.Module:
        """The averaged copy of the network."""
        return self.module

    def update(self, live: nn.Module, step: int) -> None:
        """Move the average towards ``live`` after optimizer step ``step`` (0-based)."""
        self.n_averaged.fill_(step + 1)  # a fill on the device: no synchronization
        self.update_parameters(live)

    def check_precision(self) -> None:
        """Refuse an average kept in half precision (``bf16-true``, ``16-true``): its steps of ``1 - decay`` are
        below half precision's resolution, so the average would hardly move from the initial weights."""
        dtype = next(self.parameters()).dtype
        if dtype in (torch.float16, torch.bfloat16):
            raise ConfigError(
                f"model.ema_decay needs float32 weights, but --trainer.precision keeps them in {dtype}: the average's "
                "small steps would round away; use --trainer.precision bf16-mixed (or 16-mixed), or drop ema_decay"
            )
