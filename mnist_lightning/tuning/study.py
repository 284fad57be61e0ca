"""The study: its folder and journal file, opening or resuming it with its sampler and pruner, and what lets several
processes share it: who runs which trial, heartbeats, and recovering the trials of processes that died.

The journal (``runs/tune/<study>/study.journal``) is an append-only log that Optuna's ``JournalFileBackend`` appends
to under its own file lock, so processes on one machine, or machines sharing the folder, can write at once with no
database server.

Optuna keeps a study's storage to itself; this module creates the storage and holds it beside the study in
:class:`JournalStudy`, which finds a trial's storage id from its number through the storage's public methods.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from mnist_lightning.errors import ConfigError, one_line
from mnist_lightning.outputs import ensure_writable_folder, missing_folders, remove_empty_folders
from mnist_lightning.tuning.space import SearchSpace, space_changes

if TYPE_CHECKING:  # Optuna is imported when a search starts: the other commands do not pay for it
    import optuna
    from optuna.storages import JournalStorage
    from optuna.trial import FrozenTrial

JOURNAL = "study.journal"
# every file a study writes into its folder
STUDY_FILES = (JOURNAL, "best.yaml", "trials.csv", "trials.md", "history.png", "importance.png")
SPACE_ATTR = "tune:space"  # the study's user attribute that keeps the space it was started with
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

    def fail_for_rerun(self, number: int, note: str, reason: str = "interrupted") -> None:
        """End trial ``number`` as failed, marked to be run again by ``--resume`` (``reason``: interrupted or
        crashed); the table shows ``note``."""
        from optuna.trial import TrialState

        trial_id = self.trial_id(number)
        self.storage.set_trial_user_attr(trial_id, "note", note)
        self.storage.set_trial_user_attr(trial_id, reason, True)
        # skip_if_finished: another resuming process may have ended it a moment ago
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)


def existing_study(space: SearchSpace, folder: Path, resume: bool) -> optuna.Study | None:
    """The study ``space`` names, when it exists, after checking that this run may continue it: with ``--resume``,
    the same search space and direction. Reads the journal only (writes nothing, creates no file or folder)."""
    import optuna

    if not (folder / JOURNAL).is_file():
        return None
    storage = open_journal(folder)
    if not study_exists(storage, space.study):
        return None
    if not resume:
        raise already_exists(space, folder)
    study = optuna.load_study(study_name=space.study, storage=storage)
    check_same_space(study, space, folder)
    return study


def check_same_space(study: optuna.Study, space: SearchSpace, folder: Path) -> None:
    """A resumed study keeps the space it was started with: its trials, the sampler's model and the pruner's
    comparisons all assume it. Studies from before the space was stored are only checked for their direction."""
    stored = study.user_attrs.get(SPACE_ATTR)
    changes = space_changes(stored, space.description()) if stored else []
    if not changes and study.direction.name.lower() != space.direction:
        changes = [f"direction was {study.direction.name.lower()}, now {space.direction}"]
    if changes:
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        raise ConfigError(
            f"study {space.study} in {folder} was started with another search space: {', '.join(changes[:3])}{more}; "
            "a study "
            "keeps its space: put the space back as it was to resume, or start a new study with --study NAME"
        )


@dataclass
class CreatedFolders:
    """The folders this run made for a new study, so that a study that ends with nothing in it leaves nothing."""

    folders: list[Path]

    @classmethod
    def make(cls, folder: Path) -> CreatedFolders:
        missing = missing_folders(folder)  # deepest first
        ensure_writable_folder(folder, "the study folder (--root)")
        return cls(missing)


def open_study(space: SearchSpace, folder: Path, resume: bool) -> tuple[JournalStudy, CreatedFolders | None]:
    """The study in ``folder/study.journal``: the existing one (with ``resume``), or a new one that stores its
    space. Returns it and, for a study created now, the folders made for it (else None)."""
    import optuna

    if existing_study(space, folder, resume) is not None:
        storage = open_journal(folder)
        study = optuna.load_study(
            study_name=space.study,
            storage=storage,
            # a second process must not draw the same values as the first
            sampler=make_sampler(space, seed=None),
            pruner=make_pruner(space),
        )
        return JournalStudy(study, storage), None
    created = CreatedFolders.make(folder)
    storage = open_journal(folder)
    study = optuna.create_study(
        study_name=space.study,
        storage=storage,
        sampler=make_sampler(space, seed=space.seed),
        pruner=make_pruner(space),
        direction=space.direction,
        load_if_exists=True,  # two processes starting at once: the second one joins
    )
    if SPACE_ATTR in study.user_attrs:  # another process created it a moment ago
        check_same_space(study, space, folder)
    else:
        study.set_user_attr(SPACE_ATTR, space.description())
    return JournalStudy(study, storage), created


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
            journal.fail_for_rerun(trial.number, "interrupted: its process ended")
    trials = journal.study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for trial in trials:
        rerun = trial.user_attrs.get("interrupted") or trial.user_attrs.get("crashed")
        if trial.state == TrialState.FAIL and rerun and trial.number not in retried:
            journal.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            queued.append(trial.number)
    return queued


def worth_keeping(study: optuna.Study, owners: set[int]) -> bool:
    """Whether a study created by this run holds anything: a finished (complete or pruned) trial, or a trial of a
    process other than this run's ``owners`` (another process that joined it)."""
    from optuna.trial import TrialState

    here = machine_id()
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return True
        owner = trial.system_attrs.get(OWNER_ATTR)  # none yet: asked for by this process a moment ago
        if owner and (owner.get("machine") != here or int(owner.get("pid", 0)) not in owners):
            return True
    return False


def remove_study(folder: Path, created: CreatedFolders) -> None:
    """Remove a study this run created and that holds nothing (see :func:`worth_keeping`): its files, then the
    folders made for it while they are empty."""
    for name in STUDY_FILES:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    remove_empty_folders(created.folders)  # one not empty holds something else: kept, with those above it


def counted(trial: FrozenTrial) -> bool:
    """A trial that is part of the study's total (surplus trials, made when processes race, are not)."""
    return not trial.user_attrs.get("surplus")
