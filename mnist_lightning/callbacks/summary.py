"""The model summary printed when ``fit`` starts: Lightning's table of layers and parameter counts, with the
forward FLOPs of one image counted by torch's ``FlopCounterMode`` instead of Lightning's FLOPs column.

Lightning counts FLOPs only for a model with an ``example_input_array`` (these classifiers have none: running one
through Lightning's summary would compile a ``compile: true`` network for a batch of one and run the weight
average), so its table said ``0`` for every layer and ``0 Total Flops``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(ModelSummary.__module__)  # where Lightning's own summary goes
IMAGE_SHAPE = (1, 1, 28, 28)


def forward_flops(model: L.LightningModule) -> int | None:
    """Floating-point operations of ``model``'s forward pass on one image (a multiply-add counts 2), or None where
    they cannot be counted without side effects (a compiled network)."""
    if model.hparams.get("compile"):
        return None
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    modes = {module: module.training for module in model.modules()}
    model.eval()  # BatchNorm refuses a batch of one in training mode; the evaluated network has the same FLOPs
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(IMAGE_SHAPE, device=model.device, dtype=dtype))
    except Exception:  # a model whose forward does not take one MNIST image: no count rather than a failed fit
        return None
    finally:
        for module, training in modes.items():
            module.train(training)
    return int(counter.get_total_flops())


class ModelSummaryWithFlops(ModelSummary):
    """Lightning's ``ModelSummary`` (``max_depth`` and all) whose FLOPs are those of one image's forward pass."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self.depth = max_depth
        self.flops: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flops = forward_flops(pl_module) if self.depth and trainer.is_global_zero else None
        super().on_fit_start(trainer, pl_module)

    def summarize(  # type: ignore[override]  # Lightning's is a staticmethod; this one needs the count
        self,
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        totals = [
            (get_human_readable_count(trainable_parameters), "Trainable params"),
            (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
            (get_human_readable_count(total_parameters), "Total params"),
            (f"{model_size:,.3f}", "Total estimated model params size (MB)"),
            (str(total_training_modes.get("train", 0)), "Modules in train mode"),
            (str(total_training_modes.get("eval", 0)), "Modules in eval mode"),
        ]
        if self.flops:
            totals.append((get_human_readable_count(self.flops), "Forward FLOPs per image"))
        log.info("\n" + format_table(columns, totals))


def format_table(columns: list[tuple[str, list[str]]], totals: list[tuple[str, str]]) -> str:
    """Lightning's layout: a row per layer, a column per heading, then the totals."""
    rows = len(columns[0][1]) if columns else 0
    widths = [max([len(name), *(len(str(value)) for value in values)]) for name, values in columns]
    rule = "-" * (sum(widths) + 3 * (len(columns) + 1))
    lines = [" | ".join(f"{name:<{width}}" for (name, _), width in zip(columns, widths)), rule]
    for row in range(rows):
        lines.append(" | ".join(f"{values[row]!s:<{width}}" for (_, values), width in zip(columns, widths)))
    lines.append(rule)
    lines.extend(f"{value:<10}{label}" for value, label in totals)
    return "\n".join(lines)
