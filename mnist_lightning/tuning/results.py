"""The study's result files in ``runs/tune/<study>/``: the trials table (``trials.csv``, ``trials.md``), ``best.yaml``
and the figures (``history.png``, ``importance.png``), each written atomically.

The figures are Optuna's own (``optuna.visualization.matplotlib``); the table is this module's, see
:func:`trial_rows` for why.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_lightning.errors import one_line
from mnist_lightning.figures import save_png
from mnist_lightning.outputs import write_atomically
from mnist_lightning.tuning.space import SearchSpace
from mnist_lightning.tuning.study import counted
from mnist_lightning.tuning.trial import config_text

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from optuna.trial import FrozenTrial


def trial_rows(study: optuna.Study, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial, surplus and queued ones left out.

    Not ``study.trials_dataframe()``: it needs pandas, which this package does not depend on, and its columns
    (``number``, ``value``, ``params_<name>``, ``user_attrs_<name>``, upper-case states) are not the ones docs/tune.md
    promises; nor does it count a trial's epochs or turn a choice stored as JSON text back into its list.
    """
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counted(t) or t.state.name == "WAITING":
            continue
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
        row[space.metric] = "" if t.value is None else round(t.value, 6)
        stored = space.decoded(t.params)
        for name in space.params:
            row[name] = stored.get(name, "")
        row["validations"] = len(t.intermediate_values)
        row["epochs"] = t.user_attrs.get("epochs", len(t.intermediate_values))
        seconds = t.duration.total_seconds() if t.duration else None
        row["seconds"] = "" if seconds is None else round(seconds, 1)
        row["run"] = t.user_attrs.get("run_dir", "")
        notes = [t.user_attrs.get("note", "")]
        if "retry_of" in t.user_attrs:
            notes.append(f"rerun of trial {t.user_attrs['retry_of']}")
        row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
    return rows


def write_table(study: optuna.Study, space: SearchSpace, folder: Path) -> list[dict[str, Any]]:
    """``trials.csv`` and ``trials.md``: one row per trial (surplus and queued ones left out)."""
    rows = trial_rows(study, space)
    columns = ["trial", "state", space.metric, *space.params, "validations", "epochs", "seconds", "run", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    write_atomically(folder / "trials.csv", buffer.getvalue())
    lines = [f"# Study {space.study}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |")
    write_atomically(folder / "trials.md", "\n".join(lines) + "\n")
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial, or None while there is none."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def write_best(study: optuna.Study, space: SearchSpace, folder: Path) -> FrozenTrial | None:
    """``best.yaml``: the complete ``fit`` configuration of the best trial (base configs, fixed settings, the
    trial's values and a checkpoint that monitors the search metric, every setting resolved), so that
    ``mnist-lightning fit --config best.yaml`` needs nothing else."""
    best = best_trial(study)
    if best is None:
        return None
    path = folder / "best.yaml"
    header = (
        f"# Best trial of study {space.study} ({space.metric} {best.value:.4f}, trial {best.number}), written by "
        "mnist-lightning tune: the complete fit configuration of that trial.\n"
        f"# Train it: mnist-lightning fit --config {shlex.quote(os.path.abspath(path))}\n"
    )
    write_atomically(path, header + config_text(space.decoded(best.params), space))
    return best


@contextlib.contextmanager
def optuna_figures() -> Iterator[None]:
    """Around Optuna's matplotlib plots: off-screen drawing, the ggplot style they switch on kept to them rather than
    left on for every later figure of the process, and none of their warnings (that they are experimental, or that a
    study is small or has no completed trial yet: the figures say what they can)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.exceptions import ExperimentalWarning

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", ExperimentalWarning)
            # e.g. "No artists with labels found" (no completed trial yet) or PED-ANOVA's "Target and region quantiles
            # select the same set of trials" (a small study): nothing the user can act on
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def write_history(study: optuna.Study, space: SearchSpace, folder: Path) -> None:
    """``history.png``: Optuna's optimisation history (each completed trial's result and the best so far), plus the
    pruned trials' last value, which Optuna's plot leaves out and docs/tune.md promises."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState
    from optuna.visualization.matplotlib import plot_optimization_history

    ax: Axes = plot_optimization_history(study, target_name=space.metric)
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    last = {t.number: t.intermediate_values[t.last_step] for t in pruned if t.last_step is not None}
    if last:
        ax.scatter(list(last), list(last.values()), marker="x", color="tab:red", label="pruned (last value)")
        ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{space.study}: optimisation history")
    save_png(ax.figure, folder / "history.png")
    plt.close(ax.figure)


def importance_note(study: optuna.Study, space: SearchSpace) -> tuple[str | None, list[str]]:
    """Why the importance cannot be computed (None when it can), and the settings that vary between completed
    trials (the only ones it can rank)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = [n for n in space.params if len({repr(t.params.get(n)) for t in complete}) > 1]
    if len(complete) < 2:
        return f"parameter importance needs at least 2 completed trials, the study has {len(complete)}", varying
    if not varying:
        return "parameter importance needs a parameter that varies between completed trials", varying
    return None, varying


def write_importance(study: optuna.Study, space: SearchSpace, folder: Path) -> str | None:
    """``importance.png``: Optuna's parameter importance plot over the completed trials; returns a note, which the
    figure shows instead, when the importance cannot be computed."""
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances

    note, varying = importance_note(study, space)
    ax: Axes | None = None
    if note is None:
        try:
            # PED-ANOVA named rather than left to the default: Optuna 4 defaulted to fANOVA, which needs scikit-learn
            evaluator = PedAnovaImportanceEvaluator()
            ax = plot_param_importances(study, evaluator=evaluator, params=varying, target_name=space.metric)
        except (ValueError, RuntimeError) as err:
            note = f"parameter importance could not be computed ({one_line(err)[:150]})"
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.5))
        ax.axis("off")
        ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
    # on the left, where Optuna's plot has its own title
    ax.set_title(f"{space.study}: parameter importance for {space.metric}", loc="left")
    ax.figure.tight_layout()
    save_png(ax.figure, folder / "importance.png")
    plt.close(ax.figure)
    return note


def write_plots(study: optuna.Study, space: SearchSpace, folder: Path) -> str | None:
    """``history.png`` and ``importance.png``; returns a note when the importance cannot be computed."""
    with optuna_figures():
        write_history(study, space, folder)
        return write_importance(study, space, folder)


def write_outputs(
    study: optuna.Study, space: SearchSpace, folder: Path
) -> tuple[list[dict[str, Any]], FrozenTrial | None, str | None]:
    """Every result file; returns the table's rows, the best trial (if any) and the importance note (if any)."""
    rows = write_table(study, space, folder)
    best = write_best(study, space, folder)
    note = write_plots(study, space, folder)
    return rows, best, note
