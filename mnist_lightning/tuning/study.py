"""The study: its folder and journal file, opening or resuming it with its sampler and pruner, and what lets several
processes share it: who runs which trial, heartbeats, and recovering the trials of processes that died.

The journal (``runs/tune/<study>/study.journal``) is an append-only log that Optuna's ``JournalFileBackend`` appends
to under its own file lock, so processes on one machine, or machines sharing the folder, can write at once with no
database server.

Optuna keeps a study's storage to itself; this module creates the storage and holds it beside the study in
:class:`JournalStudy`, which finds a trial's storage id from its number through the storage's public methods.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from mnist_lightning.errors import ConfigError, one_line
from mnist_lightning.outputs import ensure_writable_folder
from mnist_lightning.tuning.space import SearchSpace

if TYPE_CHECKING:  # Optuna is imported when a search starts: the other commands do not pay for it
    import optuna
    from optuna.storages import JournalStorage
    from optuna.trial import FrozenTrial

JOURNAL = "study.journal"
OWNER_ATTR = "tune:owner"
HEARTBEAT_ATTR = "tune:heartbeat"
# a trial's owner writes a heartbeat this often while it trains; --resume treats a running trial of another machine
# whose heartbeat is older than --stale_after seconds as dead (a trial of this machine: as soon as its process is gone)
HEARTBEAT_SECONDS = 30.0
# Optuna's default of 5 unpruned trials before the median pruner starts is a large part of a small study
MEDIAN_DEFAULTS = {"n_startup_trials": 2, "n_warmup_steps": 0}


def study_folder(root: str | Path, study: str) -> Path:
    return Path(root) / "tune" / study


def open_journal(folder: Path) -> JournalStorage:
    """The storage of ``folder/study.journal`` (the file is created on the first write)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))


def study_exists(storage: JournalStorage, name: str) -> bool:
    import optuna

    return name in optuna.study.get_all_study_names(storage)


def already_exists(space: SearchSpace, folder: Path) -> ConfigError:
    return ConfigError(
        f"study {space.study} already exists in {folder}; continue it (or join it from another process) with "
        "--resume, or start another with --study NAME"
    )


@dataclass
class JournalStudy:
    """An Optuna study and the journal storage it lives in, for the records Optuna's study has no method for."""

    study: optuna.Study
    storage: JournalStorage
    study_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.study_id = self.storage.get_study_id_from_name(self.study.study_name)

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (what the storage's methods take)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def frozen(self, number: int) -> FrozenTrial:
        """Trial ``number`` as the journal has it now (its intermediate values included)."""
        return self.storage.get_trial(self.trial_id(number))

    def stamp(self, number: int, key: str, value: Any) -> None:
        """A system attribute of trial ``number``: bookkeeping of the tune processes, not a user's note."""
        self.storage.set_trial_system_attr(self.trial_id(number), key, value)

    def claim(self, number: int) -> None:
        """Mark trial ``number`` as this process's, so that ``--resume`` can tell whether its owner still lives."""
        self.stamp(number, OWNER_ATTR, {"machine": machine_id(), "pid": os.getpid()})

    def fail_interrupted(self, number: int, note: str) -> None:
        """End trial ``number``, left running by a process that is gone, as failed by interruption."""
        from optuna.trial import TrialState

        trial_id = self.trial_id(number)
        self.storage.set_trial_user_attr(trial_id, "note", note)
        self.storage.set_trial_user_attr(trial_id, "interrupted", True)
        # another resuming process may have ended it a moment ago
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)


def open_study(space: SearchSpace, folder: Path, resume: bool) -> tuple[JournalStudy, bool]:
    """The study in ``folder/study.journal``: new, or (with ``resume``) the existing one. Returns it and whether it
    was created now."""
    import optuna

    ensure_writable_folder(folder, "the study folder (--root)")
    storage = open_journal(folder)
    exists = study_exists(storage, space.study)
    if exists and not resume:
        raise already_exists(space, folder)
    study = optuna.create_study(
        study_name=space.study,
        storage=storage,
        # a second process must not draw the same values as the first
        sampler=make_sampler(space, seed=space.seed if not exists else None),
        pruner=make_pruner(space),
        direction=space.direction,
        load_if_exists=True,  # two processes starting at once: the second one joins
    )
    if exists and study.direction.name.lower() != space.direction:
        raise ConfigError(
            f"study {space.study} was started to {study.direction.name.lower()}; the space now says {space.direction}"
        )
    return JournalStudy(study, storage), not exists


def make_sampler(space: SearchSpace, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, space.n_trials // 3)))


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    import optuna

    try:
        if space.pruner == "median":
            return optuna.pruners.MedianPruner(**{**MEDIAN_DEFAULTS, **space.pruner_args})
        if space.pruner == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(**space.pruner_args)
        return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"search space {space.path}: pruner settings rejected ({one_line(err)})") from None


class Heartbeat(Callback):
    """Stamps the trial with the time now and then while it trains, so other processes can tell it is alive."""

    def __init__(self, journal: JournalStudy, number: int) -> None:
        self.journal, self.number, self.last = journal, number, 0.0

    def beat(self) -> None:
        now = time.time()
        if now - self.last >= HEARTBEAT_SECONDS:
            self.last = now
            self.journal.stamp(self.number, HEARTBEAT_ATTR, now)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.beat()

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.beat()


def machine_id() -> str:
    """This machine (and boot): two containers with one host name still differ."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}:{boot}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_gone(trial: FrozenTrial, here: str, now: float, stale_after: float) -> bool:
    """Whether the process running ``trial`` has ended: on this machine, its process is gone; on another, its
    heartbeat is older than ``stale_after`` seconds."""
    owner = trial.system_attrs.get(OWNER_ATTR, {})
    if owner.get("machine") == here:
        return not process_alive(int(owner.get("pid", 0)))
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0
    return now - float(trial.system_attrs.get(HEARTBEAT_ATTR, started)) > stale_after


def recover_interrupted(journal: JournalStudy, stale_after: float) -> list[int]:
    """Mark trials whose process is gone as failed, and queue each failed-by-interruption trial again (once).

    Returns the numbers of the trials queued again.
    """
    from optuna.trial import TrialState

    here, now = machine_id(), time.time()
    for trial in journal.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if owner_gone(trial, here, now, stale_after):
            journal.fail_interrupted(trial.number, "interrupted: its process ended")
    trials = journal.study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in retried:
            journal.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            queued.append(trial.number)
    return queued


def counted(trial: FrozenTrial) -> bool:
    """A trial that is part of the study's total (surplus trials, made when processes race, are not)."""
    return not trial.user_attrs.get("surplus")
