"""What ``predict`` writes: the predictions as CSV, from one process."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from mnist_lightning.errors import MNISTLightningError
from mnist_lightning.evaluation.ensemble import EnsembleClassifier
from mnist_lightning.evaluation.temperature import apply_temperature, parse_temperature
from mnist_lightning.outputs import write_atomically


class DistributedPredictError(MNISTLightningError, ValueError):
    """``predict`` was asked to run on several processes; it writes one CSV from one process."""


def require_single_process(world_size: int) -> None:
    """Refuse ``predict`` with several processes: each would only see its own shard of the images."""
    if world_size > 1:
        raise DistributedPredictError(
            f"predict runs in one process but {world_size} were asked for; "
            "run it with --trainer.devices 1 --trainer.num_nodes 1 and without the ddp preset"
        )


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results as CSV: index, predicted digit, and the ten class probabilities.

    Args:
        output: the CSV file; relative paths are under the trainer's ``default_root_dir``.
        temperature: divide the logits by this before the softmax: ``stored`` (the default) applies the temperature
            ``mnist-lightning report`` fitted on the checkpoint's validation split and stored with it (1 when there
            is none; every member of an ensemble its own), a positive number that one, ``off`` none (1).
    """

    def __init__(self, output: str = "predictions.csv", temperature: float | str = "stored") -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.temperature = temperature
        self.temperature_choice = parse_temperature(temperature, "predictions.temperature")  # None: the stored one
        self.output_path: Path | None = None  # checked before predicting (see MNISTLightningCLI.before_predict)
        self.written: Path | None = None

    def resolve(self, root: str | Path) -> Path:
        """The CSV file: ``output`` itself when absolute, else under ``root`` (the trainer's default_root_dir)."""
        path = Path(self.output)
        return path if path.is_absolute() else Path(root) / path

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            require_single_process(trainer.world_size)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the checkpoint was restored: trainer.ckpt_path is the file the weights came from. An ensemble's
        # members got their own stored temperatures when it was built; a number given here applies on top.
        if isinstance(pl_module, EnsembleClassifier):
            pl_module.temperature = self.temperature_choice or 1.0
        else:
            apply_temperature(pl_module, trainer.ckpt_path, self.temperature_choice, "--predictions.temperature")

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any] | None,
    ) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        probs = torch.cat([b.float().cpu() for b in batches]) if batches else torch.empty(0, 10)
        files = getattr(trainer.datamodule, "predict_files", None)
        if files is not None:
            header, rows = image_rows(files, probs, trainer.datamodule.predict_failures)
        else:
            header = "index,prediction," + ",".join(f"prob_{k}" for k in range(probs.shape[1]))
            rows = [
                f"{i},{row.argmax().item()}," + ",".join(f"{p:.6f}" for p in row.tolist())
                for i, row in enumerate(probs)
            ]
        path = self.output_path or self.resolve(trainer.default_root_dir)
        write_atomically(path, "\n".join([header, *rows]) + "\n")
        self.written = path
        print(f"Predictions for {len(rows):,} images written to {path}", file=sys.stderr)


def image_rows(
    files: Sequence[Path], probs: torch.Tensor, failures: Sequence[tuple[Path, str]]
) -> tuple[str, list[str]]:
    """CSV header and rows for predictions on image files: file, digit, ten probabilities, ``error``; files that
    could not be used come last, with an empty digit and probabilities and the reason in ``error``."""
    num_classes = probs.shape[1]
    table = [["file", "prediction", *(f"prob_{k}" for k in range(num_classes)), "error"]]
    table += [[str(f), row.argmax().item(), *(f"{p:.6f}" for p in row.tolist()), ""] for f, row in zip(files, probs)]
    table += [[str(f), "", *([""] * num_classes), message] for f, message in failures]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(table)
    header, *rows = text.getvalue().splitlines()
    return header, rows
