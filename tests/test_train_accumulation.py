"""Under gradient accumulation the per-step mechanisms count optimizer steps, not batches: the weight average moves
once per optimizer step, and the in-epoch ``last.ckpt`` refresh happens every ``last_every_n_train_steps``
optimizer steps, once each, after the batch that completed the step (never between the batches of one step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.callbacks import AtomicCheckpointIO, ResumableCheckpoint
from mnist_lightning.models.averaging import WeightAverage
from mnist_lightning.tracking import WatchHistograms


class RecordingIO(AtomicCheckpointIO):
    """Atomic checkpoint IO that records, for every save of ``last.ckpt``, the optimizer step and the training
    batches processed that the saved state holds."""

    def __init__(self) -> None:
        super().__init__()
        self.last_saves: list[tuple[int, int]] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if Path(path).name == "last.ckpt":
            batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
            self.last_saves.append((checkpoint["global_step"], batches))
        super().save_checkpoint(checkpoint, path, storage_options)


def fit(root: Path, model: L.LightningModule, accumulate: int, batches: int, *callbacks: L.Callback, **kw: Any):
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        **kw,
    )
    trainer.fit(model, datamodule=MNISTDataModule(batch_size=16))
    return trainer


@pytest.mark.parametrize("accumulate", [2, 3])
def test_the_weight_average_moves_once_per_optimizer_step(
    tmp_path: Path, accumulate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates: list[int] = []
    original = WeightAverage.update_parameters

    def counted(self: WeightAverage, live: torch.nn.Module) -> None:
        updates.append(int(self.n_averaged))
        original(self, live)

    monkeypatch.setattr(WeightAverage, "update_parameters", counted)
    model = MLPClassifier(hidden_sizes=[8], lr=0.01, ema_decay=0.9)
    trainer = fit(tmp_path, model, accumulate, 7 * accumulate, enable_checkpointing=False)
    assert trainer.global_step == 7
    # one update per optimizer step, each with its own step count (the warm-up's t), none per batch
    assert len(updates) == trainer.global_step == 7
    assert updates == sorted(set(updates)) and updates[-1] - updates[0] == 6


@pytest.mark.parametrize("accumulate", [2, 3])
def test_last_ckpt_is_refreshed_every_n_optimizer_steps_once_each(tmp_path: Path, accumulate: int) -> None:
    io = RecordingIO()
    checkpoint = ResumableCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, last_every_n_train_steps=2)
    trainer = fit(tmp_path, MLPClassifier(hidden_sizes=[]), accumulate, 7 * accumulate, checkpoint, plugins=[io])
    assert trainer.global_step == 7
    # refreshes at optimizer steps 2, 4 and 6, once each and each right after the batch that completed the step;
    # then Lightning's own save at the end of the epoch (step 7)
    assert io.last_saves == [(2, 2 * accumulate), (4, 4 * accumulate), (6, 6 * accumulate), (7, 7 * accumulate)]


@pytest.mark.parametrize("accumulate", [2, 3])
def test_watch_histograms_are_sent_once_per_optimizer_step(tmp_path: Path, accumulate: int) -> None:
    class Logger:  # what WatchHistograms uses of the W&B logger
        watch_log_freq = 2

        def __init__(self) -> None:
            self.rows: list[dict[str, int]] = []
            self.experiment = self

        def log(self, row: dict[str, int]) -> None:
            self.rows.append(row)

    logger = Logger()
    fit(tmp_path, MLPClassifier(hidden_sizes=[]), accumulate, 7 * accumulate, WatchHistograms(logger),  # type: ignore[arg-type]
        enable_checkpointing=False)  # fmt: skip
    assert [row["trainer/global_step"] for row in logger.rows] == [2, 4, 6]
