"""The ``mnist-lightning tune`` command: its arguments (:func:`add_tune_parser`), running it
(:func:`run_tune_command`) and :func:`tune`, the same search as a Python function.

Everything that can be wrong with a search is found before the study is touched (:mod:`.space`, :mod:`.checks`,
:func:`.study.existing_study`): one line, exit code 1, no folder or journal entry left. What stops a search later
is handled in :func:`stopped`: a study created by this run that ends with nothing in it is removed, any other gets
its tables rewritten and a command that continues it, exactly as printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning.cli.argtypes import positive_int, positive_number
from mnist_lightning.cli.messages import PROG
from mnist_lightning.threads import share_threads
from mnist_lightning.tuning.checks import probe
from mnist_lightning.tuning.results import write_outputs
from mnist_lightning.tuning.search import INTERRUPTIONS, optimize
from mnist_lightning.tuning.space import SearchSpace, load_space
from mnist_lightning.tuning.study import (
    CreatedFolders,
    JournalStudy,
    existing_study,
    open_study,
    recover_interrupted,
    remove_study,
    study_folder,
    worth_keeping,
)
from mnist_lightning.tuning.trial import quiet_trials
from mnist_lightning.tuning.workers import WorkerPool

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

RESULT_FILES = "best.yaml, trials.csv, trials.md, history.png, importance.png"
TABLE_FILES = "trials.csv, trials.md"
STALE_AFTER = 600.0


@dataclass
class TuneOptions:
    """What locates a study and how this run takes part in it: the options a continue-command repeats."""

    space: str  # as given: a file, or the name of one in configs/tune/
    study: str | None = None
    n_trials: int | None = None
    resume: bool = False
    root: str = "runs"
    stale_after: float = STALE_AFTER
    workers: int = 1
    threads: int | None = None
    worker: bool = False  # a process started by another tune's --workers

    def continue_command(self, space: SearchSpace) -> str:
        """The command that continues this study, shell-quoted: every option that located it (the space file, the
        study, the root, as absolute paths so it also works from another folder) and the ones that shaped this run."""
        given = Path(self.space)
        space_arg = os.path.abspath(given) if given.is_file() else self.space
        args = [PROG, "tune", space_arg, "--study", space.study, "--root", os.path.abspath(self.root), "--resume"]
        if self.n_trials is not None:
            args += ["--n_trials", str(self.n_trials)]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.stale_after != STALE_AFTER:
            args += ["--stale_after", f"{self.stale_after:g}"]
        return shlex.join(args)

    def worker_args(self, space: SearchSpace) -> list[str]:
        """``tune``'s arguments for a worker process of this study (the study's total resolved)."""
        return [
            str(space.path),
            *("--study", space.study, "--root", self.root, "--n_trials", str(space.n_trials)),
            *("--stale_after", str(self.stale_after)),
        ]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; the tune command prints its own lines."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def summary_line(space: SearchSpace, rows: list[dict[str, Any]], best: FrozenTrial | None, folder: Path) -> str:
    states = [r["state"] for r in rows]
    counts = f"{states.count('complete')} complete, {states.count('pruned')} pruned, {states.count('fail')} failed" + (
        f", {states.count('running')} running" if "running" in states else ""
    )
    if best is None:
        return f"tune {space.study}: no completed trial yet ({counts}); files in {folder}/ ({TABLE_FILES})"
    values = ", ".join(f"{name}={value!r}" for name, value in space.decoded(best.params).items())
    return (
        f"tune {space.study}: best {space.metric} {best.value:.4f} (trial {best.number}: {values}); "
        f"{len(rows)} trials: {counts}; files in {folder}/ ({RESULT_FILES})"
    )


def tune(
    space_path: str | Path,
    *,
    study: str | None = None,
    n_trials: int | None = None,
    resume: bool = False,
    root: str | Path = "runs",
    stale_after: float = STALE_AFTER,
    workers: int = 1,
    threads: int | None = None,
    worker: bool = False,
) -> Path:
    """Run (or continue, or join) a search; returns the study's folder with its result files."""
    options = TuneOptions(str(space_path), study, n_trials, resume, str(root), stale_after, workers, threads, worker)
    space = load_space(options.space, options.study, options.n_trials)
    folder = study_folder(options.root, space.study)
    with quiet_optuna(), quiet_trials():
        # before the (slower) probe: an existing study without --resume, or resumed with another space
        existing_study(space, folder, options.resume or options.worker)
        wandb_on = probe(space, dry_run=not options.worker)  # a worker's study was probed by its parent
        threads = options.threads
        if options.workers > 1 or threads is not None:
            threads = share_threads(options.workers, threads)
        journal, created = open_study(space, folder, options.resume or options.worker)
        if options.resume and created is not None:
            print(f"tune {space.study}: no study to resume in {folder}: starting it", file=sys.stderr)
        queued = recover_interrupted(journal, options.stale_after) if options.resume and not options.worker else []
        if queued:
            print(f"tune {space.study}: running interrupted trial(s) {queued} again", file=sys.stderr)
        pool = WorkerPool()
        try:
            if options.workers > 1:
                # the count this process took, as a flag: torch caps a count from OMP_NUM_THREADS alone at the cores
                others, args = options.workers - 1, [*options.worker_args(space), "--threads", str(threads)]
                pool = WorkerPool.start(others, args)
            optimize(journal, space, wandb_on, folder, between_trials=pool.check)
            pool.wait()
        except BaseException as err:
            stopped(err, options, space, journal, folder, created, pool)
            raise
        if options.worker:
            return folder
        rows, best, note = write_outputs(journal.study, space, folder)
    if note:
        print(f"tune {space.study}: {note} (importance.png says so)", file=sys.stderr)
    print(summary_line(space, rows, best, folder), file=sys.stderr)
    if best is not None:
        best_yaml = os.path.abspath(folder / "best.yaml")
        print(f"Train the best: {PROG} fit --config {shlex.quote(best_yaml)}", file=sys.stderr)
    return folder


def stopped(
    err: BaseException,
    options: TuneOptions,
    space: SearchSpace,
    journal: JournalStudy,
    folder: Path,
    created: CreatedFolders | None,
    pool: WorkerPool,
) -> None:
    """After Ctrl+C, SIGTERM or an error: end the workers, then keep the study and say how to continue it, or
    remove it when this run created it and it holds nothing (the corrected command then starts afresh)."""
    interrupted = isinstance(err, INTERRUPTIONS)
    # a signal from a terminal reached the workers too: they get time to stop their trials by themselves
    pool.stop(signal.SIGTERM if isinstance(err, SIGTERMException) else signal.SIGINT, grace=interrupted)
    if options.worker:
        return  # the process that started this one reports
    owners = {os.getpid(), *pool.pids}
    if not interrupted and created is not None and not worth_keeping(journal.study, owners):
        remove_study(folder, created)
        print(
            f"tune {space.study}: stopped by an error before any trial finished; the new study was removed, so the "
            "same command starts it again once the error below is fixed",
            file=sys.stderr,
        )
        return
    with contextlib.suppress(Exception):
        write_outputs(journal.study, space, folder)
    what = "interrupted" if interrupted else "stopped by an error (below); the trial it was in is marked failed"
    print(
        f"tune {space.study}: {what}; continue the study (the stopped trial runs again from the start) with: "
        f"{options.continue_command(space)}",
        file=sys.stderr,
    )


def add_tune_parser(commands: Any) -> argparse.ArgumentParser:
    """``mnist-lightning tune``'s arguments, as a subcommand of the extra commands' parser."""
    about = "hyperparameter search with Optuna over a search space (configs/tune/*.yaml), offline; see docs/tune.md"
    parser = commands.add_parser("tune", help=about, description=about)
    parser.add_argument("space", help="search space YAML file, or the name of one in configs/tune/")
    parser.add_argument("--study", default=None, help="study name (default: the space's 'study', else its file name)")
    parser.add_argument(
        "--n_trials",
        type=positive_int,
        default=None,
        help="the study's total of finished trials (default: the space's)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted study, or join it from another process"
    )
    parser.add_argument("--root", default="runs", help="the study goes to ROOT/tune/<study>/ (default: %(default)s)")
    parser.add_argument(
        "--stale_after",
        type=positive_number,
        default=STALE_AFTER,
        help="with --resume: a running trial of another machine silent for this many seconds is dead "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes in all on this study on this machine (this one and N-1 it starts), each with its share of "
        "the cores as torch threads (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads of each process (default: OMP_NUM_THREADS if set, else with --workers N the cores / N, "
        "else torch's own); when you start several tune --resume yourself, give each cores / processes",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def run_tune_command(options: argparse.Namespace) -> None:
    """Run ``mnist-lightning tune`` with the options :func:`add_tune_parser` parsed."""
    settings = {name: getattr(options, name) for name in TuneOptions.__dataclass_fields__ if name != "space"}
    tune(options.space, **settings)
