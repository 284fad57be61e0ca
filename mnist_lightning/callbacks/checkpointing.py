"""Training that survives interruptions: checkpoints that are never half-written, ``last.ckpt`` refreshed within
an epoch and saved on SIGTERM or Ctrl+C, and one process at a time per run folder."""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning import interrupts
from mnist_lightning.errors import ConfigError, MNISTLightningError, OutputPathError
from mnist_lightning.outputs import reason

# signals that stopped a fit in this process (the console script turns Ctrl+C into exit code 130)
_INTERRUPTIONS: list[int] = []


def interrupted_by() -> int | None:
    """The signal (SIGINT for Ctrl+C, SIGTERM) that last stopped a fit in this process, or None."""
    return _INTERRUPTIONS[-1] if _INTERRUPTIONS else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, made safe for files that must never be half-written or read unsafely.

    - a checkpoint is written to ``.<name>.partial`` beside its target and renamed over it, so a kill or a full disk
      during a save leaves the previous file whole (Lightning's own save streams into the target);
    - a failed save is one line naming the file and the reason;
    - checkpoints are loaded with ``weights_only=True`` (tensors and plain data only) unless asked otherwise.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        staging = path.with_name(f".{path.name}.partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            super().save_checkpoint(checkpoint, staging, storage_options)
            os.replace(staging, path)
        except OSError as err:
            staging.unlink(missing_ok=True)
            raise OutputPathError(
                f"cannot write checkpoint {path} ({reason(err)}); the previous checkpoints are intact; free some "
                "space or choose another folder with --checkpoint.dirpath, then continue with --ckpt_path last"
            ) from None
        except BaseException:
            staging.unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> Any:
        if map_location is None:
            return super().load_checkpoint(path, weights_only=True if weights_only is None else weights_only)
        return super().load_checkpoint(path, map_location, True if weights_only is None else weights_only)


class RunBusyError(MNISTLightningError):
    """Another process is training the same run."""


class RunLock:
    """An exclusive lock on a run folder for as long as this process trains it.

    The lock is an ``flock`` on ``<run>/.lock``: the operating system releases it when the process ends, however it
    ends (SIGKILL included), so a killed run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip()
            self.handle.close()
            raise RunBusyError(
                f"run {run_dir} is being trained by another process{f' (pid {holder})' if holder else ''}; "
                "wait for it to finish, or start a new run without --ckpt_path"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self) -> None:
        """Give the run back (the process ending does the same)."""
        if not self.handle.closed:
            self.handle.close()


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, made safe to interrupt.

    - (with :class:`AtomicCheckpointIO`, which the CLI always adds) every file is written under a temporary name
      and renamed, so a kill during a save never leaves a truncated checkpoint;
    - ``last.ckpt`` is also refreshed every ``last_every_n_train_steps`` optimizer steps (with ``save_last``), so a
      run killed with SIGKILL loses at most that many steps;
    - on SIGTERM or Ctrl+C during ``fit`` the state is saved to ``last.ckpt`` before the process exits, when at
      least one step was trained (an interruption before that leaves every file as it was); in the console
      command the fit stops after the optimizer step or validation batch under way (see
      :mod:`mnist_lightning.interrupts`), so the saved state is that of whole steps.

    A run resumed from any of these with ``--ckpt_path last`` continues in the middle of the epoch, with the same
    batch order (the training loader is resumable), and ends at the same epoch and step as an uninterrupted run.

    Args:
        last_every_n_train_steps: refresh ``last.ckpt`` this often during an epoch (0: only when Lightning would).
        **kwargs: the arguments of ``ModelCheckpoint``.
    """

    def __init__(self, *, last_every_n_train_steps: int = 200, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if last_every_n_train_steps < 0:
            raise ConfigError(f"last_every_n_train_steps must be 0 or more, got {last_every_n_train_steps}; try 200")
        self.last_every_n_train_steps = last_every_n_train_steps
        # whether Ctrl+C or SIGTERM prints fit's "continue with --ckpt_path last" (tune's trials print their own)
        self.announce_interruption = True
        self._step_at_batch_start = -1
        self._step_at_train_start: int | None = None  # None: training has not started in this process

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._step_at_train_start = trainer.global_step
        # with several processes each would stop at its own safe point, and a rank that stopped while another
        # waits in a collective would hang both: DDP keeps Lightning's own handling
        if trainer.world_size == 1:
            interrupts.defer()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        interrupts.stop_deferring()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        super().on_validation_batch_end(trainer, pl_module, *args)
        interrupts.stop_if_requested()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        super().on_train_batch_start(trainer, pl_module, *args)
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every = self.last_every_n_train_steps
        # under gradient accumulation several batches end at one global_step: only the batch whose optimizer step
        # moved it counts (a save after the other batches would repeat the refresh, and one between the batches of
        # an accumulation would lose the gradients gathered so far when resumed)
        stepped = trainer.global_step > self._step_at_batch_start
        if (
            self.save_last
            and every > 0
            and stepped
            and trainer.global_step % every == 0
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            # Lightning has no public "save last.ckpt now": these are ModelCheckpoint's private
            # _should_skip_saving_checkpoint, _save_last_checkpoint, _monitor_candidates and _last_global_step_saved,
            # each guarded by tests/test_train_canaries.py. Not counted as this step's save: the validation at the end
            # of an epoch must still save best and last
            already_saved = self._last_global_step_saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = already_saved
        if stepped:  # a safe point to stop at: the state of a whole optimizer step
            interrupts.stop_if_requested()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        interrupts.disarm()
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        _INTERRUPTIONS.append(signal.SIGTERM if isinstance(exception, SIGTERMException) else signal.SIGINT)
        try:
            self._save_on_interruption(trainer, exception)
        finally:
            interrupts.state_saved()  # from here a further signal ends the process at once

    def _save_on_interruption(self, trainer: L.Trainer, exception: BaseException) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if trainer.fast_dev_run or self.save_last is False:
            return
        # stopped while starting (loading data, W&B, the sanity check) or before the first step: nothing new to
        # save, and a resumed run's last.ckpt must not be replaced by the weights it had before they were restored
        if self._step_at_train_start is None or trainer.global_step <= self._step_at_train_start:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if trainer.is_global_zero and self.announce_interruption:
            what = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl+C"
            interrupts.report(
                f"stopped by {what} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f"saved {self.last_model_path}; continue with the same command plus --ckpt_path last"
            )
