"""Canaries: each private Lightning name the training code still relies on, checked so that this fails (and says
which workaround to revisit) when Lightning renames it, stops calling it or changes what it does.

- ``LightningModule._current_fx_name``: ``MNISTClassifier.__setattr__`` stores it without ``nn.Module``'s lookups;
- ``ModelCheckpoint._should_skip_saving_checkpoint``, ``_save_last_checkpoint``, ``_monitor_candidates`` and
  ``_last_global_step_saved``: ``ResumableCheckpoint`` refreshes ``last.ckpt`` within an epoch and on SIGTERM/Ctrl+C;
- ``WandbLogger._wandb_init``: ``AutoWandbLogger`` leaves out the ``anonymous=None`` wandb warns about.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from mnist_lightning import MLPClassifier, MNISTDataModule
from mnist_lightning.callbacks import AtomicCheckpointIO, ResumableCheckpoint, checkpointing
from mnist_lightning.tracking import AutoWandbLogger


def tiny_fit(root: Path, model: L.LightningModule, *callbacks: L.Callback, **options: Any) -> L.Trainer:
    settings = {"max_epochs": 1, "limit_train_batches": 10, "limit_val_batches": 0} | options
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        plugins=[AtomicCheckpointIO()],
        **settings,
    )
    trainer.fit(model, datamodule=MNISTDataModule(batch_size=32))
    return trainer


# --- LightningModule._current_fx_name ---------------------------------------------------------------------------
class CountingClassifier(MLPClassifier):
    """An MLP that counts how Lightning sets ``_current_fx_name`` and what it holds inside its hooks."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(hidden_sizes=[], **kwargs)
        self.seen: dict[str, Any] = {}
        self.sets = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, "sets", self.__dict__.get("sets", 0) + 1)
        super().__setattr__(name, value)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen["training_step"] = self._current_fx_name
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.seen["on_train_epoch_end"] = self._current_fx_name
        super().on_train_epoch_end()


def test_canary_lightning_sets_current_fx_name_on_the_module_around_its_hooks(tmp_path: Path) -> None:
    model = CountingClassifier()
    trainer = tiny_fit(tmp_path, model, enable_checkpointing=False)
    # the attribute MNISTClassifier.__setattr__ short-cuts is the one Lightning assigns, hook by hook
    assert model.seen == {"training_step": "training_step", "on_train_epoch_end": "on_train_epoch_end"}
    # ...several times a step: what makes the short cut worth having
    assert model.sets >= 4 * trainer.global_step
    # the short cut stores it as a plain attribute, where Lightning reads it back
    assert "_current_fx_name" in vars(model)


# --- ModelCheckpoint's private save-last machinery ----------------------------------------------------------------
def test_canary_model_checkpoint_private_methods_keep_their_signatures() -> None:
    def parameters(function: Any) -> list[str]:
        return list(inspect.signature(function).parameters)

    assert parameters(ModelCheckpoint._should_skip_saving_checkpoint) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._monitor_candidates) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._save_last_checkpoint) == ["self", "trainer", "monitor_candidates"]
    assert ModelCheckpoint(save_last=True)._last_global_step_saved == 0


class ReadLastDuringTheEpoch(L.Callback):
    """Reads ``last.ckpt``'s step at every step of the epoch, while the epoch is still running."""

    def __init__(self, folder: Path) -> None:
        self.last = folder / "last.ckpt"
        self.steps_seen: dict[int, int | None] = {}

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # ModelCheckpoint callbacks run after the others: this sees the refreshes of earlier steps, not this one's
        state = torch.load(self.last, weights_only=True) if self.last.is_file() else None
        self.steps_seen[trainer.global_step] = None if state is None else state["global_step"]


def test_canary_last_checkpoint_is_refreshed_in_the_middle_of_an_epoch(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    checkpoint = ResumableCheckpoint(dirpath=folder, save_last=True, last_every_n_train_steps=3)
    reader = ReadLastDuringTheEpoch(folder)
    tiny_fit(tmp_path, MLPClassifier(hidden_sizes=[]), reader, checkpoint)
    # read in the same epoch (10 steps): the file Lightning writes at the epoch's end cannot be the one seen here
    assert reader.steps_seen[3] is None
    assert reader.steps_seen[4] == 3 and reader.steps_seen[7] == 6 and reader.steps_seen[10] == 9


def test_canary_a_refresh_at_an_epochs_last_step_leaves_the_epochs_own_saves(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    checkpoint = ResumableCheckpoint(
        dirpath=folder, filename="best-{step}", monitor="val/acc", mode="max", save_top_k=-1, save_last=True,
        last_every_n_train_steps=5,
    )  # fmt: skip
    tiny_fit(tmp_path, MLPClassifier(hidden_sizes=[]), checkpoint, max_epochs=2, limit_train_batches=5,
             limit_val_batches=1)  # fmt: skip
    # steps 5 and 10 end the epochs: the refreshes there must not count as the step's save (_last_global_step_saved
    # is put back), or validation would skip the epoch's checkpoint and the last.ckpt written after it
    assert sorted(path.name for path in folder.glob("best-*.ckpt")) == ["best-step=10.ckpt", "best-step=5.ckpt"]
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10 and len(last["callbacks"][checkpoint.state_key]["best_k_models"]) == 2


class InterruptAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_canary_ctrl_c_saves_last_checkpoint_at_the_step_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Ctrl+C is recorded for this process's exit code: keep it out of the tests that run after this one
    monkeypatch.setattr(checkpointing, "_INTERRUPTIONS", [])
    folder = tmp_path / "checkpoints"
    checkpoint = ResumableCheckpoint(dirpath=folder, save_last=True, last_every_n_train_steps=0)
    with pytest.raises(SystemExit):  # Lightning's way out of a fit stopped by Ctrl+C
        tiny_fit(tmp_path, MLPClassifier(hidden_sizes=[]), InterruptAt(4), checkpoint)
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4


# --- WandbLogger._wandb_init --------------------------------------------------------------------------------------
def test_canary_lightning_still_gives_wandb_init_an_anonymous_setting(tmp_path: Path) -> None:
    # when this fails, Lightning no longer passes anonymous=None: drop the pop of it in AutoWandbLogger.__init__
    assert WandbLogger(offline=True, save_dir=str(tmp_path))._wandb_init["anonymous"] is None
    assert "anonymous" not in AutoWandbLogger(offline=True, save_dir=str(tmp_path))._wandb_init


def test_an_auto_wandb_run_starts_without_the_anonymous_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    logger = AutoWandbLogger(offline=True, save_dir=str(tmp_path), project="canary")
    assert not logger.run_started
    try:
        assert logger.experiment.offline and logger.run_started
    finally:
        logger.experiment.finish()
    assert "anonymous" not in capfd.readouterr().err
