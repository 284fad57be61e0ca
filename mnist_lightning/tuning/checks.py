"""What ``tune`` checks before any trial runs, so that a mistake is one line and not a failed trial later.

:func:`probe` builds the ``fit`` configuration at the ends of every range and with every choice (a misspelt
setting, a value the model refuses, a float setting searched as whole numbers), checks that the trials validate,
and finds the metrics the model logs at a validation with a dry run (:func:`validation_metrics`): one training
batch and one validation batch on a throwaway Trainer that writes nothing. The search metric must be one of them.
"""

from __future__ import annotations

import tempfile
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from mnist_lightning.errors import ConfigError
from mnist_lightning.tuning.space import SearchSpace
from mnist_lightning.tuning.trial import TuneCLI, build_cli


def probe(space: SearchSpace, dry_run: bool = True) -> bool:
    """Build the fit configuration at the ends of every range (and with every choice) before any training, so a
    misspelt setting or a value the model refuses is one error now, not a failed trial later; with ``dry_run``,
    also check that the search metric is logged at validation. Returns whether the trials log to W&B."""
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
        check_validates(cli, space)
        if i == 0:
            check_settings_known(cli, space)
            check_float_settings(cli, space)
            if dry_run:
                check_metric_logged(cli, space)
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


def check_float_settings(cli: TuneCLI, space: SearchSpace) -> None:
    """A range with whole bounds is searched as whole numbers; for a setting that is a fraction (dropout 0..1)
    that would try 0 and 1 only. Written ``type: int`` is taken as meant."""
    for name, param in space.params.items():
        if param.kind == "int" and not param.typed and isinstance(cli.config.get(name), float):
            raise ConfigError(
                f"search space {space.path}: {name} is a decimal setting but low {param.low} and high {param.high} "
                f"are whole numbers, so only the whole numbers {param.low}..{param.high} would be tried; write "
                f"low: {float(param.low)} (or add type: float), or type: int if whole numbers are meant"
            )


def check_validates(cli: TuneCLI, space: SearchSpace) -> None:
    """A trial that never validates never reports its metric."""
    trainer = cli.trainer
    never = trainer.limit_val_batches == 0 or (
        trainer.check_val_every_n_epoch is not None
        and trainer.max_epochs is not None
        and trainer.max_epochs >= 0
        and trainer.check_val_every_n_epoch > trainer.max_epochs
    )
    if never:
        raise ConfigError(
            f"search space {space.path}: the trials never validate (trainer.limit_val_batches "
            f"{trainer.limit_val_batches}, check_val_every_n_epoch {trainer.check_val_every_n_epoch}, max_epochs "
            f"{trainer.max_epochs}), so no trial would report {space.metric}; keep validation on"
        )


class MetricRecorder(Callback):
    """The names of the metrics logged when each validation ends (what a trial's reporter sees)."""

    def __init__(self) -> None:
        self.at_validation: set[str] = set()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.at_validation |= set(trainer.callback_metrics)


def validation_metrics(cli: TuneCLI) -> tuple[set[str], set[str]]:
    """The metrics a trial of ``cli``'s configuration logs: those known when a validation ends, and all of them
    (with the training ones). A dry run of one training and one validation batch, on a Trainer of its own with no
    logger, checkpoint or output folder (a temporary root), on the configured accelerator and precision; the model
    and data are ``cli``'s, which no trial reuses."""
    recorder = MetricRecorder()
    settings: dict[str, Any] = cli.config.get("trainer") or {}
    with tempfile.TemporaryDirectory(prefix="mnist-lightning-tune-") as root:
        trainer = L.Trainer(
            accelerator=settings.get("accelerator") or "auto",
            precision=settings.get("precision"),
            devices=1,
            max_steps=1,
            limit_train_batches=1,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[recorder],
            default_root_dir=root,
        )
        trainer.fit(cli.model, datamodule=cli.datamodule)
    return recorder.at_validation, set(trainer.callback_metrics)


def check_metric_logged(cli: TuneCLI, space: SearchSpace) -> None:
    """The search metric is one the model logs at validation (see :func:`validation_metrics`)."""
    at_validation, logged = validation_metrics(cli)
    if space.metric in at_validation:
        return
    where = f"search space {space.path}: metric {space.metric!r}"
    shown = ", ".join(sorted(at_validation)) or "none"
    if space.metric in logged:
        raise ConfigError(
            f"{where} is logged after validation (at the end of a training epoch), so trials cannot report it; "
            f"use one the model logs at validation: {shown}"
        )
    raise ConfigError(f"{where} is not logged by the model; the metrics logged at validation are: {shown}")
