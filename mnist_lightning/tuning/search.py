"""The search loop of one ``tune`` process: ask the study for a trial, train it, tell the study how it went, until
the study (whichever processes run it) has its total of finished trials."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning.errors import ConfigError, MNISTLightningError, one_line
from mnist_lightning.tuning.results import write_outputs, write_table
from mnist_lightning.tuning.space import SearchSpace
from mnist_lightning.tuning.study import JournalStudy, counted
from mnist_lightning.tuning.trial import run_trial


def active_before(journal: JournalStudy, number: int | None = None) -> int:
    """How many trials of the total are finished or running (of those numbered below ``number``, if given)."""
    from optuna.trial import TrialState

    active = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(
        t.state in active and counted(t) and (number is None or t.number < number)
        for t in journal.study.get_trials(deepcopy=False)
    )


def optimize(journal: JournalStudy, space: SearchSpace, wandb_on: bool, folder: Path) -> int:
    """Run trials until the study has ``n_trials`` finished (complete or pruned) ones; returns how many ran here."""
    import optuna
    from optuna.trial import TrialState

    study, ran = journal.study, 0
    while True:
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
        print(f"tune {space.study}: trial {trial.number} starting", file=sys.stderr)
        try:
            value = run_trial(trial, journal, space, wandb_on)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            state = "pruned"
        except ConfigError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except MNISTLightningError as err:
            trial.set_user_attr("note", one_line(err)[:200])
            study.tell(trial, state=TrialState.FAIL)
            state = f"failed: {one_line(err)[:200]}"
        except (KeyboardInterrupt, SystemExit, SIGTERMException):
            # Ctrl+C (Lightning turns it into SystemExit after saving last.ckpt) or SIGTERM (a batch system taking
            # the machine back): --resume runs this trial again
            trial.set_user_attr("note", "interrupted")
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            with contextlib.suppress(MNISTLightningError):
                write_outputs(study, space, folder)
            print(
                f"tune {space.study}: interrupted in trial {trial.number}; continue the study (that trial runs again "
                f"from the start) with: mnist-lightning tune {space.path} --resume",
                file=sys.stderr,
            )
            raise
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            state = f"{space.metric} {value:.4f}"
        ran += 1
        print(f"tune {space.study}: trial {trial.number} {state} ({time.time() - started:.0f} s)", file=sys.stderr)
        write_table(study, space, folder)
