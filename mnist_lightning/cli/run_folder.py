"""The folder a ``fit`` writes to: placed, checked writable and locked before training starts.

Every run gets ``<root>/<project>/<run id>/`` (see :mod:`mnist_lightning.runs`); a logger names it, and without one
the CLI places the checkpoints there itself. A resumed run goes on in its own folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mnist_lightning.callbacks import RunLock
from mnist_lightning.checkpoint_paths import LAST_NAME
from mnist_lightning.checkpoints import CheckpointInfo
from mnist_lightning.outputs import ensure_writable_folder
from mnist_lightning.runs import PROJECT_FOLDER, new_run_id, run_directory


def place_run(trainer: Trainer, checkpoint: CheckpointInfo | None) -> Path:
    """Give this run its own folder ``<root>/<project>/<run id>``, with or without a logger; return it."""
    callback = trainer.checkpoint_callback
    if trainer.logger is None and isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
        run_id = checkpoint.run_id if checkpoint and checkpoint.run_id else new_run_id()
        if checkpoint is not None and checkpoint.path.parent.name == "checkpoints":
            folder = checkpoint.path.parent.parent  # a resumed run goes on in its own folder
        else:
            folder = Path(trainer.default_root_dir) / PROJECT_FOLDER / run_id
        callback.dirpath = str(folder / "checkpoints")
    return Path(run_directory(trainer))


def refresh_resumed_last(trainer: Trainer, checkpoint: CheckpointInfo | None, run_dir: Path | None) -> None:
    """Resuming from ``last.ckpt`` (or ``last-vN.ckpt``) in the folder this run writes its checkpoints to: refresh that
    file, as a run resumed in place does.

    Lightning restores which file is "last" only when the folder recorded in the checkpoint is the one written to
    now; for a run folder that was copied or moved it forgets it, finds the file there and writes ``last-v1.ckpt``
    beside it, so the folder gains a stale copy with every resume. The folder is known before Lightning's
    ModelCheckpoint resolves it: the one given, else ``<run dir>/checkpoints`` (ModelCheckpoint's own rule).
    """
    callback = trainer.checkpoint_callback
    if checkpoint is None or not isinstance(callback, ModelCheckpoint) or not LAST_NAME.fullmatch(checkpoint.path.name):
        return
    dirpath = callback.dirpath or (os.path.join(run_dir, "checkpoints") if run_dir is not None else None)
    if dirpath and Path(dirpath).resolve() == checkpoint.path.parent.resolve():
        callback.last_model_path = os.path.join(dirpath, checkpoint.path.name)


def keep_checkpoint_folder(trainer: Trainer, checkpoint: CheckpointInfo | None) -> None:
    """Evaluating a checkpoint (validate, test, predict): point the checkpoint callback at the checkpoint's folder.

    Evaluation saves nothing, so where the callback would save does not matter; Lightning still compares it with the
    folder stored in the file and warns "dirpath has changed" about best-k bookkeeping that evaluation never uses:
    not something a user can act on.
    """
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is None and checkpoint is not None:
        callback.dirpath = str(checkpoint.path.parent)
        warnings.filterwarnings("ignore", message="The dirpath has changed")


def check_outputs(trainer: Trainer, run_dir: Path | None) -> None:
    """Before an hour of training: every folder this run will write to can be written."""
    if not trainer.is_global_zero:
        return
    if run_dir is not None:
        ensure_writable_folder(run_dir, "the run folder (--trainer.default_root_dir)")
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        ensure_writable_folder(callback.dirpath, "the checkpoint folder (--checkpoint.dirpath)")
    for logger in trainer.loggers:
        if logger.save_dir:
            ensure_writable_folder(logger.save_dir, "the logger's folder (--trainer.logger.init_args.save_dir)")


def lock_run(trainer: Trainer, run_dir: Path | None) -> RunLock | None:
    """The lock that keeps a second process from continuing the same run at once (taken by rank 0 only)."""
    if trainer.is_global_zero and run_dir is not None and os.environ.get("LOCAL_RANK", "0") == "0":
        return RunLock(run_dir)
    return None
