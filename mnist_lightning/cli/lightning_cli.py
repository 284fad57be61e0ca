""":class:`MNISTLightningCLI`: LightningCLI with the project's defaults, checkpoints as defaults, one-line errors.

The class only wires LightningCLI's hooks to the modules next to it, one job each: :mod:`.parsing` (two-pass parse
with a checkpoint's settings), :mod:`.presets` (``--config NAME``), :mod:`.messages` (one-line errors),
:mod:`.trainer_setup` (callbacks and plugins), :mod:`.run_folder` and :mod:`.preflight` (before ``fit`` and the
others run), :mod:`.ensembles` (``--ensemble``/``--tta``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from mnist_lightning.callbacks import RunLock, require_single_process
from mnist_lightning.checkpoints import CheckpointInfo, check_model_fits
from mnist_lightning.cli.ensembles import (
    add_ensemble_arguments,
    ensemble_of_checkpoints,
    evaluates_ensemble,
    refuse_ensemble,
)
from mnist_lightning.cli.messages import OneLineErrorParser, quiet_library_noise
from mnist_lightning.cli.parsing import parse_with_checkpoint, section_of
from mnist_lightning.cli.preflight import check_predictions_file, check_resumed_epochs, prepare_data_before_launch
from mnist_lightning.cli.presets import config_dir
from mnist_lightning.cli.run_folder import (
    check_outputs,
    keep_checkpoint_folder,
    lock_run,
    place_run,
    refresh_resumed_last,
)
from mnist_lightning.cli.trainer_setup import add_callback_arguments, drop_prediction_writer, trainer_additions
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import DEBUG_ENV, ConfigError, innermost, one_line, user_error
from mnist_lightning.models import MNISTClassifier
from mnist_lightning.tracking import SaveConfigToRun

quiet_library_noise()


DEFAULTS_FILE = config_dir() / "defaults.yaml"
LOGGER_OFF = ("false", "False")


def command_line(args: ArgsType) -> list[str] | None:
    """The arguments of the command line: ``args``, or ``sys.argv`` after the program when None; None when ``args``
    is a config (a dict or Namespace) rather than arguments."""
    argv = sys.argv[1:] if args is None else args
    return list(argv) if isinstance(argv, (list, tuple)) else None


def defaults_without_logger(args: ArgsType) -> dict[str, Any] | None:
    """When the command line ends by switching the logger off (``--trainer.logger false``, after any ``--config``,
    ``--trainer`` or other ``--trainer.logger`` argument): defaults.yaml's settings but the logger, as parser
    defaults. Otherwise None (defaults.yaml is read as a default config file)."""
    argv = command_line(args)
    if argv is None:
        return None
    last = None  # the last argument that can set the logger, with its value
    for index, arg in enumerate(argv):
        name, equals, value = str(arg).partition("=")
        if name in ("-c", "--config", "--trainer") or name.startswith("--trainer.logger"):
            given = value if equals else (str(argv[index + 1]) if index + 1 < len(argv) else "")
            last = (name, given)
    if last is None or last[0] != "--trainer.logger" or last[1] not in LOGGER_OFF:
        return None
    settings = yaml.safe_load(DEFAULTS_FILE.read_text())
    settings["trainer"].pop("logger", None)
    flat = {key: value for key, value in settings.items() if key != "trainer"}
    return flat | {f"trainer.{key}": value for key, value in settings["trainer"].items()}


def subcommand_named(args: ArgsType, subcommands: dict[str, set[str]]) -> str | None:
    """The subcommand a command line starts with (``sys.argv`` when ``args`` is None), or None."""
    argv = command_line(args)
    if not argv:
        return None
    return argv[0] if argv[0] in subcommands else None


class MNISTLightningCLI(LightningCLI):
    """LightningCLI over every :class:`MNISTClassifier` and the :class:`MNISTDataModule`.

    ``MNISTLightningCLI(args=[...], run=False)`` builds the model, data and trainer with the same packaged defaults
    (seed, W&B logger, ``runs/`` folder) as the console command; with ``--ckpt_path`` the model and its data split
    come from the checkpoint unless given. ``epilog`` ends ``--help`` (the console command lists its other commands).
    """

    def __init__(self, args: ArgsType = None, run: bool = True, *, epilog: str | None = None, **kwargs: Any) -> None:
        self.checkpoint: CheckpointInfo | None = None
        self.checkpoint_state: dict[str, Any] | None = None
        self.run_dir: Path | None = None
        self.run_lock: RunLock | None = None
        self.with_subcommands = run
        named = subcommand_named(args, type(self).subcommands()) if run else None
        if named is not None:
            # only the named subcommand's parser is built: each one adds every Trainer argument and every
            # classifier's signature (measured on the 2-core VM: 0.75 s for the four, under load)
            self.subcommands = lambda: {named: type(self).subcommands()[named]}  # type: ignore[method-assign]
        # with the logger switched off on the command line, defaults.yaml's W&B logger is left out (the rest of the
        # file becomes parser defaults in add_arguments_to_parser): resolving its class's signature imports wandb,
        # 0.4 s of a quiet 2-core VM's start-up, for a logger the command line then drops
        self.defaults_without_logger = defaults_without_logger(args)
        defaults = {} if self.defaults_without_logger else {"default_config_files": [str(DEFAULTS_FILE)]}
        parser_kwargs: dict[str, Any] = dict.fromkeys(self.subcommands(), defaults) if run else dict(defaults)
        if epilog:
            parser_kwargs["epilog"] = epilog
        super().__init__(
            MNISTClassifier,
            MNISTDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.defaults_without_logger:
            parser.set_defaults(self.defaults_without_logger)
        add_callback_arguments(parser)
        add_ensemble_arguments(parser)

    # ----------------------------------------------------------------------------------------------- parsing
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse, then let the checkpoint named by the *parsed* ``ckpt_path`` supply the model and data settings
        (see :mod:`mnist_lightning.cli.parsing`)."""
        subcommands = tuple(self.subcommands()) if self.with_subcommands else ()
        parsed = parse_with_checkpoint(parser, args, subcommands)
        self.config, self.checkpoint, self.checkpoint_state = parsed.config, parsed.checkpoint, parsed.checkpoint_state

    def _parse_ckpt_path(self) -> None:
        # LightningCLI (2.6) would merge the checkpoint's model hyperparameters over the parsed config here, after
        # parse_arguments, overriding a --model the user gave. parse_arguments above already made the checkpoint's
        # settings the defaults (the user's values win), so this step must do nothing. No public hook replaces it:
        # lightning is pinned below 2.7, and tests/test_checkpoints.py and tests/test_cli_canaries.py fail if
        # LightningCLI stops calling it between parse_arguments and instantiate_classes.
        return

    def parsed_section(self) -> Any:
        """The parsed settings of the command being run (all of them without subcommands)."""
        return self.config.get(self.subcommand) if self.subcommand else self.config

    # ------------------------------------------------------------------------------------------ instantiation
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = section_of(self.config_init, self.subcommand)["trainer"]
        ensemble = evaluates_ensemble(self.parsed_section())
        kwargs = {**trainer_additions(trainer_config, self.model, self.subcommand, ensemble), **kwargs}
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            if os.environ.get(DEBUG_ENV):
                raise
            raise ConfigError(f"trainer settings rejected: {one_line(str(err))}") from None
        if self.subcommand != "predict":
            drop_prediction_writer(trainer)
        return trainer

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # A model or data module that refuses a value (torch's nn.Dropout(p=1.5), say) raises ValueError, which
            # jsonargparse wraps in its own; it is the user's setting, so it gets one line. Other errors stay bugs.
            root = innermost(err)
            if user_error(err) is not None or not isinstance(root, ValueError) or os.environ.get(DEBUG_ENV):
                raise
            raise ConfigError(f"a setting was refused while building the model or data: {one_line(str(root))}") from err

    def after_instantiate_classes(self) -> None:
        if self.checkpoint is not None and self.checkpoint_state is not None:
            check_model_fits(self.checkpoint, self.model, self.checkpoint_state["state_dict"])
            self.checkpoint_state = None  # the weights are loaded again by Lightning, from the file
        if self.subcommand in (None, "fit"):
            self.run_dir = place_run(self.trainer, self.checkpoint)
            refresh_resumed_last(self.trainer, self.checkpoint, self.run_dir)
        else:
            keep_checkpoint_folder(self.trainer, self.checkpoint)

    # ------------------------------------------------------------------------------------------- subcommands
    def before_fit(self) -> None:
        refuse_ensemble(self.parsed_section(), "fit")
        check_outputs(self.trainer, self.run_dir)
        self.run_lock = lock_run(self.trainer, self.run_dir)
        # after the lock: "another process is continuing it" comes first
        check_resumed_epochs(self.checkpoint, self.trainer.max_epochs)
        prepare_data_before_launch(self.trainer, self.datamodule)

    def before_validate(self) -> None:
        refuse_ensemble(self.parsed_section(), "validate")
        prepare_data_before_launch(self.trainer, self.datamodule)

    def before_test(self) -> None:
        self.build_ensemble()
        prepare_data_before_launch(self.trainer, self.datamodule)

    def before_predict(self) -> None:
        require_single_process(self.trainer.world_size)
        self.build_ensemble()
        check_predictions_file(self.trainer)

    def build_ensemble(self) -> None:
        """With ``--tta`` or ``--ensemble``: evaluate an ensemble of the checkpoints instead (Lightning runs the
        subcommand with ``self.model`` and the ``ckpt_path`` of ``config_init``, read after this hook)."""
        if evaluates_ensemble(self.parsed_section()):
            self.model = ensemble_of_checkpoints(self.config_init[self.subcommand], self.model, self.subcommand)
