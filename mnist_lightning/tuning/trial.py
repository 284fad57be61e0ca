"""One trial: the ``fit`` configuration it trains (built and checked like ``mnist-lightning fit`` would), training it
in this process with Optuna's pruning callback and a heartbeat, and the result it reports.

Before any training, :func:`probe` builds the configuration at the ends of every range, so that a setting ``fit``
does not know is one error up front rather than a failed trial later.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import WandbLogger

from mnist_lightning.callbacks import NonFiniteLossError, RunLock
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.cli.messages import summarize_parse_error
from mnist_lightning.cli.run_folder import check_outputs
from mnist_lightning.errors import DEBUG_ENV, ConfigError, MNISTLightningError, one_line
from mnist_lightning.tuning.space import SearchSpace
from mnist_lightning.tuning.study import Heartbeat, JournalStudy

if TYPE_CHECKING:
    from optuna.trial import Trial


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


def probe(space: SearchSpace) -> bool:
    """Build the fit configuration at the ends of every range (and with every choice) before any training, so a
    misspelt setting or a value the model refuses is one error now, not a failed trial later. Returns whether the
    trials log to W&B."""
    rounds = max(len(p.extremes()) for p in space.params.values())
    uses_wandb = False
    for i in range(rounds):
        values = {name: p.extremes()[i % len(p.extremes())] for name, p in space.params.items()}
        try:
            cli = build_cli(space.fit_args(values), space)
        except ConfigError:
            if i == 0:  # a misspelt name gets a clearer message than the parser's
                check_settings_known(build_cli(space.base_args(), space), space, base_only=True)
            raise
        if i == 0:
            check_settings_known(cli, space)
        uses_wandb = uses_wandb or any(isinstance(lg, WandbLogger) for lg in cli.trainer.loggers)
    return uses_wandb


def check_settings_known(cli: TuneCLI, space: SearchSpace, base_only: bool = False) -> None:
    """Every searched and fixed setting is in the parsed configuration. A model's ``**kwargs`` lets jsonargparse
    take ``model.init_args.lrr`` without a word and drop it, so a misspelt name would search nothing."""
    keys = [*space.params, *space.fixed]
    # on the base configuration alone, the settings of a model the space switches to are not there yet
    other_model = base_only and any(k in ("model", "model.class_path") for k in keys)
    for key in keys:
        if key not in cli.config and not (other_model and key.startswith("model.")):
            model = cli.config.get("model.class_path", "the model").rsplit(".", 1)[-1]
            raise ConfigError(
                f"search space {space.path}: {key} is not a setting of this fit configuration; see "
                f"'mnist-lightning fit --help' and 'mnist-lightning fit --model {model} --help'"
            )


def wandb_args(space: SearchSpace, number: int) -> list[str]:
    """One W&B run per trial, named after it and grouped and tagged by study."""
    return [
        f"--trainer.logger.init_args.group={space.study}",
        f"--trainer.logger.init_args.tags={json.dumps(['tune', space.study])}",
        f"--trainer.logger.init_args.name={space.study}-{number}",
    ]


def run_trial(trial: Trial, journal: JournalStudy, space: SearchSpace, wandb_on: bool) -> float:
    """Train one trial; the metric's best validation value is its result (the best checkpoint has it too)."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    values = {name: p.suggest(trial) for name, p in space.params.items()}
    args = space.fit_args(values) + (wandb_args(space, trial.number) if wandb_on else [])
    cli = build_cli(args, space)
    trial.set_user_attr("run_dir", str(cli.run_dir) if cli.run_dir else "")
    cli.trainer.callbacks.append(Heartbeat(journal, trial.number))
    # every validation is reported (the history plot shows it); the pruner decides whether to stop
    cli.trainer.callbacks.append(PyTorchLightningPruningCallback(trial, monitor=space.metric))
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
        best = getattr(cli.trainer.checkpoint_callback, "best_model_path", "")
        if best:
            trial.set_user_attr("checkpoint", str(best))
    reported = journal.frozen(trial.number).intermediate_values
    if not reported:
        raise ConfigError(
            f"search space {space.path}: the metric {space.metric!r} was never logged during validation; use a "
            "metric the model logs (val/acc, val/loss) and keep validation on (trainer.limit_val_batches > 0)"
        )
    pick = max if space.direction == "maximize" else min
    return pick(reported.values())


def finish_wandb(cli: TuneCLI) -> None:
    """End the trial's W&B run: the next trial starts its own run in this process (a W&B logger that finds a run
    open reuses it)."""
    if not any(isinstance(logger, WandbLogger) for logger in cli.trainer.loggers):
        return
    import wandb

    # the logger's run is wandb's current run; finish() does nothing when the logger never started one
    with contextlib.suppress(Exception):
        wandb.finish()
