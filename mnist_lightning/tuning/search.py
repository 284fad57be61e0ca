"""The search loop of one ``tune`` process: ask the study for a trial, train it, tell the study how it went and
print one line about it, until the study (whichever processes run it) has its total of finished trials."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning.errors import one_line
from mnist_lightning.tuning.results import write_table
from mnist_lightning.tuning.space import SearchSpace
from mnist_lightning.tuning.study import JournalStudy, counted
from mnist_lightning.tuning.trial import run_trial

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

INTERRUPTIONS = (KeyboardInterrupt, SystemExit, SIGTERMException)


def active_before(journal: JournalStudy, number: int | None = None) -> int:
    """How many trials of the total are finished or running (of those numbered below ``number``, if given)."""
    from optuna.trial import TrialState

    active = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(
        t.state in active and counted(t) and (number is None or t.number < number)
        for t in journal.study.get_trials(deepcopy=False)
    )


def optimize(
    journal: JournalStudy,
    space: SearchSpace,
    wandb_on: bool,
    folder: Path,
    between_trials: Callable[[], None] | None = None,
) -> int:
    """Run trials until the study has ``n_trials`` finished (complete or pruned) ones; returns how many ran here.

    A trial stopped by Ctrl+C or SIGTERM, or ended by an error (a bug, or a user error that shows only once
    training runs), is marked failed and to be run again by ``--resume``, and the exception goes on: the command
    (``command.stopped``) rewrites the tables so they agree with the journal, and decides what to keep and print.
    ``between_trials`` is called before each new trial (the command checks its worker processes there).
    """
    import optuna
    from optuna.trial import TrialState

    study, ran = journal.study, 0
    while True:
        if between_trials is not None:
            between_trials()
        if active_before(journal) >= space.n_trials:
            return ran  # finished, or the last trials are running in other processes
        trial = study.ask()
        journal.claim(trial.number)
        # several processes may ask at once: the trial numbers (given out in order by the storage) decide which of
        # them is beyond the total; that one is closed unrun and left out of the tables
        if active_before(journal, trial.number) >= space.n_trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return ran
        started = time.time()
        try:
            value = run_trial(trial, journal, space, wandb_on)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        except INTERRUPTIONS:
            # Ctrl+C (Lightning turns it into SystemExit after saving last.ckpt) or SIGTERM (a batch system taking
            # the machine back): --resume runs this trial again
            journal.fail_for_rerun(trial.number, "interrupted", "interrupted")
            raise  # the tables are written once, by tune's stopped()
        except BaseException as err:
            reason = one_line(str(err) or type(err).__name__)[:200]
            journal.fail_for_rerun(trial.number, f"crashed: {reason}", "crashed")
            raise
        else:
            study.tell(trial, value)
        ran += 1
        print(trial_line(space, journal.frozen(trial.number), time.time() - started), file=sys.stderr)
        write_table(study, space, folder)


def trial_line(space: SearchSpace, trial: FrozenTrial, seconds: float) -> str:
    """One line about a finished trial: its number, state, score, values and time."""
    reported = list(trial.intermediate_values.values())
    count = f"{len(reported)} validation{'s' if len(reported) != 1 else ''}"
    if trial.state.name == "COMPLETE":
        result = f"complete: {space.metric} {trial.value:.4f} (best of {count})"
    else:
        pick = max if space.direction == "maximize" else min
        best = f", best {space.metric} {pick(reported):.4f}" if reported else ""
        note = trial.user_attrs.get("note")
        result = f"pruned after {count}{best}" + (f" ({note})" if note else "")
    return f"tune {space.study}: trial {trial.number} {result}; {values_text(space, trial.params)}; {seconds:.0f} s"


def values_text(space: SearchSpace, stored: dict[str, Any]) -> str:
    """A trial's values, each under the last part of its name where that is unambiguous (``lr=0.0064``)."""
    values = space.decoded(stored)
    short = [name.rsplit(".", 1)[-1] for name in values]
    parts = []
    for (name, value), label in zip(values.items(), short, strict=True):
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{label if short.count(label) == 1 else name}={shown}")
    return " ".join(parts)
