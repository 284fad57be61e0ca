"""One trial: the ``fit`` configuration it trains (built and checked like ``mnist-lightning fit`` would), training it
in this process with a heartbeat and :class:`TrialReporter`, and the result it reports: the best value of the
search metric over every validation the trial made.

:mod:`.checks` does what can be checked before any trial; :func:`quiet_trials` keeps a trial to the one line the
search loop prints about it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from mnist_lightning.callbacks import NonFiniteLossError, ResumableCheckpoint, RunLock
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.cli.messages import summarize_parse_error
from mnist_lightning.cli.run_folder import check_outputs
from mnist_lightning.errors import DEBUG_ENV, ConfigError, MNISTLightningError, one_line
from mnist_lightning.tuning.space import SearchSpace
from mnist_lightning.tuning.study import Heartbeat, JournalStudy

if TYPE_CHECKING:
    from optuna.trial import Trial

# a trial prints one line (the search loop's), not a model summary and progress bars: settings of the trial's run
# only, not of best.yaml (a fit of the best settings shows them as any fit does)
QUIET_TRIAL = {"trainer": {"enable_progress_bar": False, "enable_model_summary": False}}
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


class TuneCLI(MNISTLightningCLI):
    """The ``fit`` CLI whose parse errors are raised (and become one ConfigError) instead of ending the process."""

    def init_parser(self, **kwargs: Any) -> Any:
        parser = super().init_parser(**kwargs)
        parser.exit_on_error = False
        return parser


def build_cli(args: list[str], space: SearchSpace) -> TuneCLI:
    """Model, data and trainer of one trial, exactly as ``mnist-lightning fit <args>`` would build them."""
    try:
        cli = TuneCLI(args=args, run=False)
    except MNISTLightningError:
        raise
    except Exception as err:
        # jsonargparse's ArgumentError (or the ValueError it wraps around what a class rejected)
        if os.environ.get(DEBUG_ENV) or type(err).__name__ not in ("ArgumentError", "ValueError"):
            raise
        raise ConfigError(
            f"search space {space.path}: fit rejects the settings ({summarize_parse_error(str(err))}); "
            "check the names and ranges against 'mnist-lightning fit --help'"
        ) from None
    if cli.trainer.world_size > 1:
        raise ConfigError(
            f"search space {space.path}: tune runs each trial in one process but {cli.trainer.world_size} were asked "
            "for; use trainer.devices: 1 (run several tune processes on one study to use more devices)"
        )
    return cli


def config_text(values: dict[str, Any], space: SearchSpace) -> str:
    """The complete ``fit`` configuration of the base configs, the fixed settings and ``values`` as YAML: every
    setting resolved, the same text a run's ``config.yaml`` holds, so ``fit --config`` needs nothing else."""
    cli = build_cli(space.fit_args(values), space)
    return cli.parser.dump(cli.config, skip_none=False)


@contextlib.contextmanager
def quiet_trials() -> Iterator[None]:
    """Lightning's and W&B's start-up lines ("Seed set to", "GPU available", "Tracking run with wandb") left out
    while trials run; warnings still show. A ``WANDB_SILENT`` the user set wins."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    silent = os.environ.get("WANDB_SILENT")
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    if silent is None:
        os.environ["WANDB_SILENT"] = "true"
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if silent is None:
            os.environ.pop("WANDB_SILENT", None)


class TrialReporter(Callback):
    """Reports the search metric to Optuna after every validation (also the several of one epoch that
    ``trainer.val_check_interval`` below 1 makes), at step 0, 1, 2, ... (the validation's number, which the pruner
    compares across trials), and stops the trial when the pruner says so.

    Not optuna-integration's ``PyTorchLightningPruningCallback``: it reports at step = epoch, so Optuna ignores
    every validation of an epoch after its first, and the trial's best value could be one it never saw.
    """

    def __init__(self, trial: Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.values: list[float] = []
        self.not_finite = 0  # validations whose value was NaN or infinite
        self.epochs = 0  # epochs reached by the last validation

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import optuna

        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None or value.numel() != 1:
            return  # never logged: the trial ends in an error (checks.py makes that rare)
        if not math.isfinite(float(value)):
            self.not_finite += 1
            return
        self.trial.report(float(value), step=len(self.values))
        self.values.append(float(value))
        self.epochs = trainer.current_epoch + 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after validation {len(self.values)}")


def wandb_args(space: SearchSpace, number: int) -> list[str]:
    """One W&B run per trial, named after it and grouped and tagged by study."""
    return [
        f"--trainer.logger.init_args.group={space.study}",
        f"--trainer.logger.init_args.tags={json.dumps(['tune', space.study])}",
        f"--trainer.logger.init_args.name={space.study}-{number}",
    ]


def run_trial(trial: Trial, journal: JournalStudy, space: SearchSpace, wandb_on: bool) -> float:
    """Train one trial; its result is the best value of the metric over all its validations, the value its best
    checkpoint (which monitors that metric) holds."""
    import optuna
    import torch

    values = {name: p.suggest(trial) for name, p in space.params.items()}
    args = [*space.fit_args(values), "--config=" + json.dumps(QUIET_TRIAL)]
    args += wandb_args(space, trial.number) if wandb_on else []
    cli = build_cli(args, space)
    trial.set_user_attr("run_dir", str(cli.run_dir) if cli.run_dir else "")
    trial.set_user_attr("threads", torch.get_num_threads())  # what this process trains with (tune --workers)
    checkpoint = cli.trainer.checkpoint_callback
    if isinstance(checkpoint, ResumableCheckpoint):
        # its "continue with --ckpt_path last" is fit's advice; tune prints its own after Ctrl+C
        checkpoint.announce_interruption = False
    reporter = TrialReporter(trial, space.metric)
    cli.trainer.callbacks.extend([Heartbeat(journal, trial.number), reporter])
    check_outputs(cli.trainer, cli.run_dir)
    lock = RunLock(cli.run_dir) if cli.run_dir else None
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except NonFiniteLossError as err:
        # a diverged trial is a bad trial: pruned, so that the sampler learns to avoid its region
        trial.set_user_attr("note", f"loss not finite: {one_line(err)[:120]}")
        raise optuna.TrialPruned("loss not finite") from None
    finally:
        if lock is not None:
            lock.release()
        finish_wandb(cli)
        trial.set_user_attr("epochs", reporter.epochs)
        best = getattr(checkpoint, "best_model_path", "")
        if best:
            trial.set_user_attr("checkpoint", str(best))
    if not reporter.values and reporter.not_finite:
        trial.set_user_attr("note", f"{space.metric} was never finite")
        raise optuna.TrialPruned("metric not finite")
    if not reporter.values:
        raise ConfigError(
            f"search space {space.path}: the metric {space.metric!r} was never logged during validation; use a "
            "metric the model logs (val/acc, val/loss) and keep validation on (trainer.limit_val_batches > 0)"
        )
    pick = max if space.direction == "maximize" else min
    return pick(reporter.values)


def finish_wandb(cli: TuneCLI) -> None:
    """End the trial's W&B run: the next trial starts its own run in this process (a W&B logger that finds a run
    open reuses it)."""
    if not any(isinstance(logger, WandbLogger) for logger in cli.trainer.loggers):
        return
    import wandb

    # the logger's run is wandb's current run; finish() does nothing when the logger never started one
    with contextlib.suppress(Exception):
        wandb.finish()
