"""The ``mnist-lightning tune`` command: its arguments (:func:`add_tune_parser`), running it
(:func:`run_tune_command`) and :func:`tune`, the same search as a Python function."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_lightning.cli.argtypes import positive_int, positive_number
from mnist_lightning.tuning.results import write_outputs
from mnist_lightning.tuning.search import optimize
from mnist_lightning.tuning.space import SearchSpace, load_space
from mnist_lightning.tuning.study import (
    JOURNAL,
    already_exists,
    open_journal,
    open_study,
    recover_interrupted,
    study_exists,
    study_folder,
)
from mnist_lightning.tuning.trial import probe

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

RESULT_FILES = "best.yaml, trials.csv, trials.md, history.png, importance.png"
TABLE_FILES = "trials.csv, trials.md"


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
    stale_after: float = 600.0,
) -> Path:
    """Run (or continue, or join) a search; returns the study's folder with its result files."""
    space = load_space(space_path, study, n_trials)
    folder = study_folder(root, space.study)
    # checked before the (slower) probe; open_study checks again for a study created meanwhile
    if not resume and (folder / JOURNAL).exists() and study_exists(open_journal(folder), space.study):
        raise already_exists(space, folder)
    wandb_on = probe(space)
    with quiet_optuna():
        journal, created = open_study(space, folder, resume)
        if resume and created:
            print(f"tune {space.study}: no study to resume in {folder}: starting it", file=sys.stderr)
        queued = recover_interrupted(journal, stale_after) if resume else []
        if queued:
            print(f"tune {space.study}: running interrupted trial(s) {queued} again", file=sys.stderr)
        optimize(journal, space, wandb_on, folder)
        rows, best, note = write_outputs(journal.study, space, folder)
    if note:
        print(f"tune {space.study}: {note} (importance.png says so)", file=sys.stderr)
    print(summary_line(space, rows, best, folder), file=sys.stderr)
    if best is not None:
        bases = " ".join(f"--config {b}" for b in space.base)
        print(f"Train the best: mnist-lightning fit {bases} --config {folder / 'best.yaml'}", file=sys.stderr)
    return folder


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
        default=600.0,
        help="with --resume: a running trial of another machine silent for this many seconds is dead "
        "(default: %(default)s)",
    )
    return parser


def run_tune_command(options: argparse.Namespace) -> None:
    """Run ``mnist-lightning tune`` with the options :func:`add_tune_parser` parsed."""
    tune(
        options.space,
        study=options.study,
        n_trials=options.n_trials,
        resume=options.resume,
        root=options.root,
        stale_after=options.stale_after,
    )
