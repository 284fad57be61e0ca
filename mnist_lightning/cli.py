"""The ``mnist-lightning`` command: LightningCLI with the project's defaults and one-line errors."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

import mnist_lightning.models  # noqa: F401  (registers every classifier so --model Name resolves)
from mnist_lightning.callbacks import PredictionWriter, require_single_process
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import CheckpointError, ConfigError, MNISTLightningError
from mnist_lightning.media import MediaLogger
from mnist_lightning.models.base import MNISTClassifier
from mnist_lightning.reliability import FiniteLossGuard, ResumableCheckpoint
from mnist_lightning.tracking import SaveConfigToRun, newest_last_checkpoint, resume_run

DEBUG_ENV = "MNIST_LIGHTNING_DEBUG"
# redrawing the bar every step costs more than a small MLP's step; a configured progress bar callback wins
PROGRESS_BAR_REFRESH_STEPS = 20

# batch indices are not needed: predictions come back in the order of the (unshuffled) split
warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")


class HideAdvertisement(logging.Filter):
    """Drops Lightning's start-up tip that advertises another logging service: it says nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(HideAdvertisement())


def config_dir() -> Path:
    """The presets folder: packaged with a wheel install, the repository's ``configs/`` otherwise."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs"


class OneLineErrorParser(LightningArgumentParser):
    """Argument errors as one line (the full jsonargparse report with ``MNIST_LIGHTNING_DEBUG=1``)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if os.environ.get(DEBUG_ENV) or not self.exit_on_error:
            super().error(message, ex)
        print(
            f"mnist-lightning: error: {summarize_parse_error(message)}; see 'mnist-lightning --help'", file=sys.stderr
        )
        sys.exit(2)


def summarize_parse_error(message: str) -> str:
    """The gist of a (possibly nested, many-line) jsonargparse error, in one line."""
    lines = [line.strip().lstrip("- ").strip() for line in message.strip().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return message
    unknown = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("Expected a dot import path")), None
    )
    if unknown is not None:
        names = ", ".join(sorted(cls.__name__ for cls in model_classes()))
        return f"unknown model {unknown!r}; choose one of {names} (or a full class path)"
    keys = [i for i, line in enumerate(lines) if line.startswith("Parser key") and line.endswith(":")]
    if keys and keys[-1] + 1 < len(lines) and (keys[-1] > 0 or "Errors:" not in lines):
        return f"{lines[keys[-1]]} {lines[keys[-1] + 1]}"
    if "Errors:" in lines:
        skip = ("Expected a <class 'NoneType'>", "Given value", "Subtypes:")
        reasons = [line for line in lines[lines.index("Errors:") + 1 :] if not line.startswith(skip)]
        if reasons:
            return f"{lines[0]} {reasons[0]}" if lines[0].startswith("Parser key") else reasons[0]
    return lines[0]


def model_classes() -> list[type[MNISTClassifier]]:
    """Every concrete classifier that ``--model`` accepts."""
    found, todo = [], [MNISTClassifier]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls is not MNISTClassifier:
            found.append(cls)
    return found


class MNISTLightningCLI(LightningCLI):
    """LightningCLI over every :class:`MNISTClassifier` and the :class:`MNISTDataModule`."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        given = sys.argv[1:] if args is None else list(args)
        resolved = resolve_preset_args(given)
        if args is not None or resolved != given:
            args = resolved
        self.checkpoint_defaults = checkpoint_defaults(resolved)
        super().__init__(
            MNISTClassifier,
            MNISTDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveConfigToRun,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                **{
                    subcommand: {"default_config_files": [str(config_dir() / "defaults.yaml")]}
                    for subcommand in ("fit", "validate", "test", "predict")
                },
                "epilog": "more commands: serve (a page to draw digits), export (ONNX, TorchScript); see "
                "'mnist-lightning serve --help' and 'mnist-lightning export --help'",
            },
            auto_configure_optimizers=False,
            parser_class=OneLineErrorParser,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(MediaLogger, "media")
        parser.add_lightning_class_args(FiniteLossGuard, "loss_guard")
        if self.checkpoint_defaults:
            parser.set_defaults(self.checkpoint_defaults)

    def before_fit(self) -> None:
        self.prepare_data_before_launch()

    def before_validate(self) -> None:
        self.prepare_data_before_launch()

    def before_test(self) -> None:
        self.prepare_data_before_launch()

    def before_predict(self) -> None:
        require_single_process(self.trainer.world_size)

    def prepare_data_before_launch(self) -> None:
        """With several processes, fetch and check the data in rank 0 before Lightning starts the others.

        A missing or damaged file is then one error line from one process, instead of an error in rank 0 and a
        "connection closed by peer" crash in every other rank.
        """
        if self.trainer.world_size > 1 and self.trainer.is_global_zero:
            self.datamodule.prepare_data()

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        given = config.get("callbacks") or []
        configured = [*(given if isinstance(given, list) else [given]), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS)]
        if self.subcommand != "predict":
            # Lightning calls every hook of every callback on every step: the writer only works in `predict`
            callbacks = [c for c in callbacks if not isinstance(c, PredictionWriter)]
        return super()._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        # Replaces LightningCLI's merge of the checkpoint's hyperparameters over the parsed config, which would
        # silently drop a --model given on the command line: here they are parser defaults (checkpoint_defaults),
        # and a model that does not fit the checkpoint is refused after it is built. Before anything is built:
        # find `last`, refuse an unreadable checkpoint, and load tensors only.
        if not self.config.get("subcommand"):
            return
        subcommand = self.config.subcommand
        config = self.config[subcommand]
        if subcommand == "fit":
            resume_run(config)  # resolves `last` and continues the W&B run that wrote the checkpoint
        elif config.get("ckpt_path") == "last":
            found = newest_last_checkpoint(Path(config.trainer.default_root_dir or "."))
            if found is None:
                raise CheckpointError(
                    f"--ckpt_path last: no last.ckpt under {config.trainer.default_root_dir}; pass a .ckpt path"
                )
            config.ckpt_path = str(found)
        if config.get("ckpt_path") not in (None, "best", "hpc") and not str(config.ckpt_path).startswith("registry:"):
            load_checkpoint(config.ckpt_path)
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        path = config.get("ckpt_path")
        if path and Path(path).is_file():
            check_checkpoint_matches_model(path, self.model)


def resolve_preset_args(args: list[str]) -> list[str]:
    """Let ``--config NAME`` name a preset in ``configs/``; a config file that is nowhere gets a one-line error."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            index, value, prefix = i + 1, resolved[i + 1], ""
        elif arg.startswith("--config="):
            index, value, prefix = i, arg.split("=", 1)[1], "--config="
        else:
            continue
        if value.lstrip().startswith(("{", "[")) or Path(value).is_file():
            continue
        for candidate in (config_dir() / value, config_dir() / f"{value}.yaml"):
            if candidate.is_file():
                resolved[index] = prefix + str(candidate)
                break
        else:
            presets = ", ".join(
                sorted(p.stem for p in config_dir().glob("*.yaml") if p.stem not in ("defaults", "sweep"))
            )
            raise ConfigError(f"config file {value} does not exist; pass a YAML file or a preset: {presets}")
    return resolved


def check_checkpoint_matches_model(path: str | Path, model: MNISTClassifier) -> None:
    """Refuse, in one line naming both, a checkpoint whose architecture is not the one of ``model``."""
    checkpoint = load_checkpoint(path)
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    saved_class = str((checkpoint.get("hyper_parameters") or {}).get("_class_path", "?")).rsplit(".", 1)[-1]
    given_class = type(model).__name__
    saved_shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    given_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if saved_class == given_class and saved_shapes == given_shapes:
        return
    fix = "leave out --model and the model config to use the checkpoint's own, or pass a checkpoint of this model"
    if saved_class != given_class:
        raise CheckpointError(f"checkpoint {path} holds a {saved_class}, but the model given is a {given_class}; {fix}")
    given = {k: v for k, v in model.hparams.items() if not k.startswith("_")}
    differ = sorted(k for k in hparams.keys() | given.keys() if hparams.get(k) != given.get(k))
    if differ:
        mine = ", ".join(f"{k}={hparams.get(k)!r}" for k in differ)
        theirs = ", ".join(f"{k}={given.get(k)!r}" for k in differ)
        raise CheckpointError(
            f"checkpoint {path} holds {saved_class}({mine}), but the model given is {given_class}({theirs}); {fix}"
        )
    key = next(k for k in saved_shapes.keys() | given_shapes.keys() if saved_shapes.get(k) != given_shapes.get(k))
    raise CheckpointError(
        f"checkpoint {path} does not fit {given_class}: {key} is {saved_shapes.get(key)} in the checkpoint and "
        f"{given_shapes.get(key)} in the model; {fix}"
    )


def checkpoint_defaults(args: list[str]) -> dict[str, object]:
    """Model and data settings stored in the checkpoint named by ``--ckpt_path``, as parser defaults.

    With them ``test --ckpt_path X`` rebuilds the model that wrote X (and its train/validation split) without
    ``--model`` or a config; anything given on the command line or in a config still wins.
    """
    path = None
    for i, arg in enumerate(args):
        if arg == "--ckpt_path" and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--ckpt_path="):
            path = arg.split("=", 1)[1]
    if path == "last":
        root = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--trainer.default_root_dir"), "runs")
        path = newest_last_checkpoint(root)
        if path is None and "fit" not in args:
            raise CheckpointError(f"--ckpt_path last: no last.ckpt under {root}; pass a .ckpt path")
    if path is None or path in ("best", "hpc") or str(path).startswith("registry"):
        return {}
    checkpoint = load_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if class_path is None:
        raise CheckpointError(f"checkpoint {path} has no model class path; it was not written by mnist-lightning fit")
    defaults: dict[str, object] = {"model": {"class_path": class_path, "init_args": hparams}}
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    for key in ("_instantiator", "_class_path", "data_dir"):
        data.pop(key, None)
    defaults.update({f"data.{key}": value for key, value in data.items()})
    return defaults


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint's tensors and plain data (no arbitrary unpickling), or raise a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a .ckpt file from runs/<project>/<run>/checkpoints"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(err).__name__}): truncated or not a Lightning checkpoint"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def main(args: list[str] | None = None) -> None:
    """Console entry point; user errors end with one line on stderr and exit code 1 (traceback with DEBUG)."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in ("serve", "export"):  # not LightningCLI subcommands: see commands.py
            from mnist_lightning.commands import run_extra_command

            run_extra_command(argv)
        else:
            MNISTLightningCLI(args=args)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)  # the checkpoint callback has said where the state was saved
    except MNISTLightningError as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"mnist-lightning: error: {summarize_parse_error(str(err))}", file=sys.stderr)
        sys.exit(1)
