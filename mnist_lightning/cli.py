"""The ``mnist-lightning`` command: LightningCLI with the project's defaults and one-line errors."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from mnist_lightning.callbacks import (
    AtomicCheckpointIO,
    FiniteLossGuard,
    MediaLogger,
    PredictionWriter,
    ResumableCheckpoint,
    RunLock,
    require_single_process,
)
from mnist_lightning.checkpoints import (
    CheckpointInfo,
    check_data_settings,
    check_model_fits,
    check_settings,
    classifier_class,
    classifier_classes,
    find_last,
    inspect_checkpoint,
    known_class_paths,
    load_classifier,
    read_checkpoint,
    resolve_last,
)
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.ensemble import MAX_VIEWS, EnsembleClassifier, check_views, expand_checkpoints
from mnist_lightning.errors import ConfigError, MNISTLightningError, one_line
from mnist_lightning.models import MNISTClassifier
from mnist_lightning.outputs import ensure_writable_file, ensure_writable_folder
from mnist_lightning.runs import PROJECT_FOLDER, new_run_id, run_directory
from mnist_lightning.tracking import AutoWandbLogger, SaveConfigToRun, WatchHistograms, is_wandb_logger_config

DEBUG_ENV = "MNIST_LIGHTNING_DEBUG"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# redrawing the bar every step costs more than a small MLP's step; a configured progress bar callback wins
PROGRESS_BAR_REFRESH_STEPS = 20
# stands in for "no model given" while the command line is first parsed: the checkpoint may supply the model
MODEL_PLACEHOLDER = {"class_path": "mnist_lightning.models.base.MNISTClassifier"}

# batch indices are not needed: predictions come back in the order of the (unshuffled) split
warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
# every epoch's metrics are logged at its end whatever log_every_n_steps says: on short runs this tip is noise
warnings.filterwarnings("ignore", message=".*is smaller than the logging interval")


class HideAdvertisement(logging.Filter):
    """Drops Lightning's start-up tip that advertises another logging service: it says nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(HideAdvertisement())


def config_dir() -> Path:
    """The presets folder: packaged with a wheel install, the repository's ``configs/`` otherwise."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "configs"


def preset_names() -> list[str]:
    """The presets ``--config NAME`` accepts."""
    return sorted(p.stem for p in config_dir().glob("*.yaml") if p.stem not in ("defaults", "sweep"))


class OneLineErrorParser(LightningArgumentParser):
    """Argument errors as one line (the full jsonargparse report with ``MNIST_LIGHTNING_DEBUG=1``)."""

    # set while parse_arguments makes a first, tentative parse: errors are raised to it, not printed
    tentative = False

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if OneLineErrorParser.tentative:
            raise TentativeParseError(message)
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
        names = ", ".join(cls.__name__ for cls in classifier_classes())
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


class MNISTLightningCLI(LightningCLI):
    """LightningCLI over every :class:`MNISTClassifier` and the :class:`MNISTDataModule`.

    ``MNISTLightningCLI(args=[...], run=False)`` builds the model, data and trainer with the same packaged defaults
    (seed, W&B logger, ``runs/`` folder) as the console command; with ``--ckpt_path`` the model and its data split
    come from the checkpoint unless given.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        self.checkpoint: CheckpointInfo | None = None
        self.checkpoint_state: dict[str, Any] | None = None
        self.run_dir: Path | None = None
        self.run_lock: RunLock | None = None
        self.with_subcommands = run
        defaults = {"default_config_files": [str(config_dir() / "defaults.yaml")]}
        parser_kwargs: dict[str, Any] = {subcommand: defaults for subcommand in SUBCOMMANDS} if run else dict(defaults)
        parser_kwargs["epilog"] = (
            "more commands: serve (a page to draw digits), export (ONNX, TorchScript), tune (hyperparameter search, "
            "Optuna); see 'mnist-lightning serve --help' (and export, tune)"
        )
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
        parser.add_argument(
            "--ensemble",
            type=str,
            nargs="+",
            default=None,
            help="test and predict: more checkpoints (files, or folders of .ckpt files) whose class probabilities "
            "are averaged with those of --ckpt_path (which, if not given, is the first of these)",
        )
        parser.add_argument(
            "--tta",
            type=int,
            default=1,
            help=f"test and predict: average the probabilities of this many views of every image: the image and its "
            f"one-pixel shifts (1, the default, is off; 5 adds up, down, left, right; at most {MAX_VIEWS})",
        )

    # ----------------------------------------------------------------------------------------------- parsing
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then let the checkpoint named by the *parsed* ``ckpt_path`` supply the model and data settings.

        The first parse finds ``ckpt_path`` and the folders to search for ``last`` however they were given (either
        spelling on the command line, a ``--config`` file, a preset); the checkpoint's model and data settings then
        become parser defaults and the same arguments are parsed again, so anything the user gave still wins.
        """
        if isinstance(args, (dict, Namespace)):
            parse = lambda: parser.parse_object(args)  # noqa: E731
            first_parse = lambda: (parse(), True)  # noqa: E731
        else:
            argv = show_model_help(resolve_preset_args(sys.argv[1:] if args is None else list(args)))
            parse = lambda: parser.parse_args(argv)  # noqa: E731
            first_parse = lambda: parse_without_model_settings(parser, argv)  # noqa: E731
        prefixes = [f"{name}." for name in SUBCOMMANDS] if self.with_subcommands else [""]
        parser.set_defaults({f"{prefix}model": MODEL_PLACEHOLDER for prefix in prefixes})
        config, complete = first_parse()
        subcommand = config.get("subcommand")
        prefix = f"{subcommand}." if subcommand else ""
        section = config[subcommand] if subcommand else config
        follow_root_dir(section)
        user_model = None if is_placeholder(section.get("model")) else section.model

        ckpt_path = section.get("ckpt_path")
        if not ckpt_path and section.get("ensemble"):
            ckpt_path = str(expand_checkpoints(section.ensemble)[0])  # its model and data settings, as ckpt_path's
        if ckpt_path == "last":
            ckpt_path = self.resolve_last(section, subcommand)
        defaults: dict[str, Any] = {f"{p}model": None for p in prefixes}
        if ckpt_path and ckpt_path not in ("best", "hpc") and not str(ckpt_path).startswith("registry:"):
            self.checkpoint_state = read_checkpoint(ckpt_path)
            self.checkpoint = info = inspect_checkpoint(ckpt_path, self.checkpoint_state)
            check_data_settings(info, inspect.signature(MNISTDataModule.__init__).parameters)
            defaults.update({f"{prefix}data.{key}": value for key, value in info.data_settings.items()})
            trusted = [user_model.class_path] if user_model is not None else []
            if user_model is None or same_class(user_model.class_path, info.class_path):
                cls = classifier_class(info, trusted)
                check_settings(info, cls)
                defaults[f"{prefix}model"] = {"class_path": info.class_path, "init_args": info.model_settings}
        parser.set_defaults(defaults)
        if self.checkpoint is not None or user_model is None or not complete:
            config = parse()  # a missing model is now the parser's own "required" error
        section = config[subcommand] if subcommand else config
        follow_root_dir(section)
        if ckpt_path != section.get("ckpt_path"):
            section.ckpt_path = ckpt_path
        if self.checkpoint is not None and self.checkpoint.wandb_run_id:
            continue_wandb_run(section, self.checkpoint.wandb_run_id, resume=subcommand != "fit")
        self.config = config

    def resolve_last(self, section: Namespace, subcommand: str | None) -> str | None:
        """``--ckpt_path last``: the newest ``last.ckpt`` under the folders this run would write to."""
        roots = search_roots(section)
        if subcommand != "fit":
            return str(resolve_last(roots, "pass a .ckpt path, or the run's root with --trainer.default_root_dir"))
        found = find_last(*roots)
        if found is None:
            where = " or ".join(str(root) for root in dict.fromkeys(roots))
            print(f"No last.ckpt under {where}: starting a new run", file=sys.stderr)
            return None
        print(f"Resuming from {found}", file=sys.stderr)
        return str(found)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI (2.6) would merge the checkpoint's model hyperparameters over the parsed config here, after
        # parse_arguments, overriding a --model the user gave. parse_arguments above already made the checkpoint's
        # settings the defaults (the user's values win), so this step must do nothing. No public hook replaces it:
        # lightning is pinned below 2.7, and tests/test_checkpoints.py fails if LightningCLI stops calling it.
        return

    # ------------------------------------------------------------------------------------------ instantiation
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = (self.config_init[self.subcommand] if self.subcommand else self.config_init)["trainer"]
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        scheduled = self.model.hparams.get("scheduler", "none") != "none"
        monitored = any(isinstance(c, LearningRateMonitor) for c in callbacks)
        if scheduled and trainer_config.get("logger") and not monitored:
            callbacks.append(LearningRateMonitor(logging_interval="step"))  # the schedule on the run page
        loggers = trainer_config.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, AutoWandbLogger) and logger.watch_mode and self.subcommand in (None, "fit"):
                callbacks.append(WatchHistograms(logger))
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, AtomicCheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs = {"callbacks": callbacks, "plugins": plugins, **kwargs}
        if self.subcommand == "predict":
            kwargs.setdefault("logger", False)  # predictions go to a CSV file; a W&B run would stay empty
        elif self.evaluates_ensemble():
            # the figures of an ensemble are not those of the run that trained its first member: no W&B run
            kwargs.setdefault("logger", False)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            if os.environ.get(DEBUG_ENV):
                raise
            raise ConfigError(f"trainer settings rejected: {one_line(str(err))}") from None
        if self.subcommand != "predict":
            # Lightning calls every hook of every callback on every step: the writer only works in `predict`
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, PredictionWriter)]
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
        callback = self.trainer.checkpoint_callback
        if self.subcommand in (None, "fit"):
            self.place_run()
        elif isinstance(callback, ModelCheckpoint) and callback.dirpath is None and self.checkpoint is not None:
            # evaluating a checkpoint saves nothing, so where the checkpoint callback would save does not matter;
            # Lightning still compares it with the folder stored in the file and warns "dirpath has changed" about
            # best-k bookkeeping that evaluation never uses: not something a user can act on
            callback.dirpath = str(self.checkpoint.path.parent)
            warnings.filterwarnings("ignore", message="The dirpath has changed")

    def place_run(self) -> None:
        """Give this run its own folder ``<root>/<project>/<run id>``, with or without a logger."""
        callback = self.trainer.checkpoint_callback
        if self.trainer.logger is None and isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            run_id = self.checkpoint.run_id if self.checkpoint and self.checkpoint.run_id else new_run_id()
            if self.checkpoint is not None and self.checkpoint.path.parent.name == "checkpoints":
                folder = self.checkpoint.path.parent.parent  # a resumed run goes on in its own folder
            else:
                folder = Path(self.trainer.default_root_dir) / PROJECT_FOLDER / run_id
            callback.dirpath = str(folder / "checkpoints")
        self.run_dir = Path(run_directory(self.trainer))

    # ------------------------------------------------------------------------------------------- subcommands
    def before_fit(self) -> None:
        self.refuse_ensemble("fit")
        self.check_outputs()
        if self.trainer.is_global_zero and self.run_dir is not None and os.environ.get("LOCAL_RANK", "0") == "0":
            self.run_lock = RunLock(self.run_dir)
        self.check_resumed_epochs()  # after the lock: "another process is continuing it" comes first
        self.prepare_data_before_launch()

    def before_validate(self) -> None:
        self.refuse_ensemble("validate")
        self.prepare_data_before_launch()

    def before_test(self) -> None:
        self.build_ensemble()
        self.prepare_data_before_launch()

    def before_predict(self) -> None:
        require_single_process(self.trainer.world_size)
        self.build_ensemble()
        writer = next((c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)), None)
        if writer is not None:
            writer.output_path = ensure_writable_file(
                writer.resolve(self.trainer.default_root_dir), "the predictions file (--predictions.output)"
            )

    def evaluates_ensemble(self) -> bool:
        """Whether the command asks for test-time views (``--tta``) or more checkpoints (``--ensemble``)."""
        section = self.config.get(self.subcommand) if self.subcommand else self.config
        if not section:
            return False
        return bool(section.get("ensemble")) or section.get("tta") not in (None, 1)

    def refuse_ensemble(self, subcommand: str) -> None:
        if self.evaluates_ensemble():
            # validation picks checkpoints; an ensemble's figures there would be compared with a single model's
            raise ConfigError(
                f"the options --ensemble and --tta are for test and predict, not for {subcommand}; "
                f"run mnist-lightning test (or predict) with them"
            )

    def build_ensemble(self) -> None:
        """With ``--tta`` or ``--ensemble``: evaluate an :class:`EnsembleClassifier` of the checkpoints instead."""
        if not self.evaluates_ensemble():
            return
        section = self.config_init[self.subcommand]
        views = check_views(section.get("tta"))
        if not section.get("ckpt_path") or section.ckpt_path in ("best", "hpc"):
            raise ConfigError(
                "the options --tta and --ensemble evaluate checkpoints: give --ckpt_path FILE (or --ensemble FILES)"
            )
        paths = expand_checkpoints([section.ckpt_path, *(section.get("ensemble") or [])])
        own_class = f"{type(self.model).__module__}.{type(self.model).__qualname__}"  # checked by parse_arguments
        members = [load_classifier(path, trusted=[own_class]) for path in paths]
        self.model = EnsembleClassifier(members, views, sources=[str(p) for p in paths])
        section.ckpt_path = None  # every member is loaded already; Lightning has no single file to restore
        print(
            f"mnist-lightning: {self.subcommand} of {self.model.describe()}: {', '.join(map(str, paths))}",
            file=sys.stderr,
        )

    def check_resumed_epochs(self) -> None:
        """Refuse to continue a run with a ``max_epochs`` it has already passed.

        Lightning raises this only after the model, data and logger are set up (a traceback, and a W&B run resumed
        for nothing); the checkpoint already says how far the run got.
        """
        epoch = self.checkpoint.epoch if self.checkpoint is not None else None
        max_epochs = self.trainer.max_epochs
        if epoch is None or max_epochs is None or max_epochs < 0:
            return
        epochs_done = epoch + 1  # a checkpoint records the (0-based) epoch it was written in
        if epochs_done <= max_epochs:
            return
        raise ConfigError(
            f"checkpoint {self.checkpoint.path} has already trained {epochs_done} epochs, more than "
            f"--trainer.max_epochs {max_epochs}: to train on, give --trainer.max_epochs above {epochs_done}; "
            "to evaluate it, use validate or test"
        )

    def check_outputs(self) -> None:
        """Before an hour of training: every folder this run will write to can be written."""
        if not self.trainer.is_global_zero:
            return
        if self.run_dir is not None:
            ensure_writable_folder(self.run_dir, "the run folder (--trainer.default_root_dir)")
        callback = self.trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            ensure_writable_folder(callback.dirpath, "the checkpoint folder (--checkpoint.dirpath)")
        for logger in self.trainer.loggers:
            if logger.save_dir:
                ensure_writable_folder(logger.save_dir, "the logger's folder (--trainer.logger.init_args.save_dir)")

    def prepare_data_before_launch(self) -> None:
        """With several processes, fetch and check the data in rank 0 before Lightning starts the others.

        A missing or damaged file is then one error line from one process, instead of an error in rank 0 and a
        "connection closed by peer" crash in every other rank.
        """
        if self.trainer.world_size > 1 and self.trainer.is_global_zero:
            self.datamodule.prepare_data()


class TentativeParseError(Exception):
    """A first parse failed; the caller decides whether that is the user's error."""


def parse_without_model_settings(parser: LightningArgumentParser, argv: list[str]) -> tuple[Namespace, bool]:
    """The first parse, which only has to find ``ckpt_path`` and the folders. Settings of the checkpoint's model
    without a ``--model`` (``--model.dropout 0.2``) cannot be parsed before the checkpoint names the class: they are
    left out of this parse only (the flag returned is False then), and the second parse takes them (or reports
    them)."""
    reduced = drop_model_settings(argv)
    if reduced != argv and not any(a == "--model" or a.startswith("--model=") for a in argv):
        OneLineErrorParser.tentative = True
        try:
            return parser.parse_args(reduced), False
        except TentativeParseError:
            pass  # reported by the full parse below
        finally:
            OneLineErrorParser.tentative = False
    return parser.parse_args(argv), True


def drop_model_settings(argv: list[str]) -> list[str]:
    """``argv`` without ``--model.KEY VALUE`` and ``--model.KEY=VALUE`` (the model's own settings)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("--model."):
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def is_placeholder(model: Any) -> bool:
    return model is None or str(getattr(model, "class_path", "")).rsplit(".", 1)[-1] == "MNISTClassifier"


def same_class(a: str, b: str) -> bool:
    """Two class paths of the same class (jsonargparse shortens paths: ``mnist_lightning.MLPClassifier``)."""
    known = known_class_paths()
    return a == b or (a in known and known[a] is known.get(b))


def follow_root_dir(section: Namespace) -> None:
    """A W&B logger without its own ``save_dir`` writes under ``trainer.default_root_dir``: one root for a run."""
    root = section.get("trainer.default_root_dir") or "."
    for logger in logger_configs(section):
        if is_wandb_logger_config(logger) and not logger.get("init_args.save_dir") and not logger.get("init_args.dir"):
            logger["init_args.save_dir"] = str(root)


def search_roots(section: Namespace) -> list[Path]:
    """Where ``--ckpt_path last`` looks: the checkpoint folder if given, else the root (and a logger's own folder)."""
    if section.get("checkpoint.dirpath"):
        return [Path(section.get("checkpoint.dirpath"))]
    roots = [Path(section.get("trainer.default_root_dir") or ".")]
    for logger in logger_configs(section):
        save_dir = logger.get("init_args.save_dir") or logger.get("init_args.dir")
        if save_dir:
            roots.append(Path(save_dir))
    return roots


def logger_configs(section: Namespace) -> list[Namespace]:
    logger = section.get("trainer.logger")
    loggers = logger if isinstance(logger, list) else [logger]
    return [lg for lg in loggers if isinstance(lg, (Namespace, dict)) and lg.get("class_path")]


def continue_wandb_run(section: Namespace, run_id: str, resume: bool) -> None:
    """Log to the W&B run that wrote the checkpoint: ``fit`` continues it, ``validate``/``test`` add to it."""
    for logger in logger_configs(section):
        if not is_wandb_logger_config(logger):
            continue
        if logger.get("init_args.id") or logger.get("init_args.version"):
            return
        logger["init_args.id"] = run_id
        if resume:
            logger["init_args.resume"] = "allow"


def resolve_preset_args(args: list[str]) -> list[str]:
    """Let ``--config NAME`` name a preset in ``configs/``; check that every config file is readable YAML.

    A config file that is nowhere, or whose YAML is broken, gets a one-line error naming the file (and the line).
    """
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            index, value, prefix = i + 1, resolved[i + 1], ""
        elif arg.startswith("--config="):
            index, value, prefix = i, arg.split("=", 1)[1], "--config="
        else:
            continue
        if value.lstrip().startswith(("{", "[")):
            continue
        path = Path(value)
        if not path.is_file():
            candidates = (config_dir() / value, config_dir() / f"{value}.yaml")
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                raise ConfigError(
                    f"config file {value} does not exist; pass a YAML file or a preset: {', '.join(preset_names())}"
                )
            resolved[index] = prefix + str(path)
        check_yaml_file(path)
    return resolved


def check_yaml_file(path: Path) -> None:
    """Refuse a config file that cannot be read or is not YAML, naming the file, line and column."""
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path}{where}: {problem}; fix the YAML there") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read ({getattr(err, 'strerror', None) or err})") from None


def show_model_help(args: list[str]) -> list[str]:
    """``fit --model NAME --help`` shows that model's options (jsonargparse spells it ``--model.help NAME``)."""
    if not any(a in ("-h", "--help") for a in args):
        return args
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[1] if arg.startswith("--model=") else None
        if arg == "--model" and i + 1 < len(args):
            name = args[i + 1]
        if name and not name.lstrip().startswith(("{", "[")):
            subcommand = next((a for a in args if a in SUBCOMMANDS), None)
            return [*([subcommand] if subcommand else []), "--model.help", name]
    return args


def innermost(err: BaseException) -> BaseException:
    """The exception at the bottom of a chain of ``raise ... from ...``."""
    seen = {id(err)}
    while err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def user_error(err: BaseException) -> MNISTLightningError | None:
    """The user error behind ``err``: itself, or the one a library wrapped (jsonargparse wraps what a class raises
    while it is instantiated in its own ValueError); None for anything else, which is a bug."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, MNISTLightningError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
