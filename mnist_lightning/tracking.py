"""Weights & Biases: a logger that goes offline by itself, the resolved CLI config on the run page, checkpoints as
model artifacts (staged when offline), optional ``wandb.watch``, resuming a run from its checkpoint, evaluations as
runs of their own next to the training run, and the ``wandb sync`` line that uploads all of it."""

from __future__ import annotations

import contextlib
import netrc
import os
import shlex
import sys
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from mnist_lightning.checkpoints import METRICS_KEY, RUN_ID_KEY, artifact_metadata
from mnist_lightning.errors import MNISTLightningError
from mnist_lightning.outputs import ensure_writable_folder, write_atomically
from mnist_lightning.runs import PROJECT_FOLDER, new_run_id, run_directory

# the checkpoint key of the W&B run's next history step when it was saved (a resumed run goes on from there)
WANDB_STEP_KEY = "wandb_step"
# beside wandb's files of a run's folder: the next history step when the process ended
NEXT_STEP_FILE = "mnist-lightning-next-step"
# the W&B config key of an evaluation run (validate, test, report) that names the training run it evaluated
TRAINING_RUN_KEY = "training_run_id"


def wandb_logged_in() -> bool:
    """True when an API key is available from ``WANDB_API_KEY`` or the netrc entry ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class AutoWandbLogger(WandbLogger):
    """Lightning's WandbLogger, online when logged in to W&B and offline otherwise (``offline: null``).

    ``WANDB_MODE`` still wins when set. At the end it prints one line saying where the run is.

    Args:
        offline: ``null`` picks online/offline by itself; ``true`` or ``false`` forces it.
        tags: W&B tags of the run (filter and group runs by them in the W&B UI).
        group: W&B group of the run (e.g. one group per architecture or per sweep).
        notes: a free-text description shown on the run page.
        log_model: stage the best and the last checkpoint as ``model`` artifacts at the end of ``fit``, with their
            epoch, step and metrics as metadata; offline runs keep them until ``wandb sync``.
        watch: ``gradients``, ``parameters`` or ``all`` turns on ``wandb.watch`` histograms; ``null`` leaves it off.
        watch_log_freq: log the watched histograms every this many training steps.
        resume: W&B's resume mode.
        checkpoint_name: the name of the model artifact (``model-<run id>`` when not set).
        evaluates_run: the id of the training run whose checkpoint this run evaluates (the CLI sets it for
            ``validate`` and ``test``). The evaluation is a W&B run of its own (a new id, ``job_type`` the command,
            ``training_run_id`` in its config, the training run's group: the ``group`` in its ``config.yaml``, else
            its id), so it never resumes the training run: an offline training run and its evaluations are separate
            folders with separate ids, and syncing them cannot replace one history with another (wandb issues
            #3841, #5865). Its figures still go to the training run's folder.
        job_type: W&B's job type of the run (``validate`` or ``test`` for an evaluation; else none).
        **kwargs: anything else Lightning's ``WandbLogger`` (and ``wandb.init``) accepts, e.g. ``project``, ``name``.
    """

    def __init__(
        self,
        *,
        offline: bool | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        notes: str | None = None,
        log_model: bool = True,
        watch: Literal["gradients", "parameters", "all"] | None = None,
        watch_log_freq: int = 100,
        resume: Literal["allow", "must", "never"] | None = None,
        checkpoint_name: str | None = None,
        evaluates_run: str | None = None,
        job_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            offline = wandb_mode() in ("offline", "dryrun")
        # wandb's own banner is replaced by the one line printed in finalize()
        os.environ.setdefault("WANDB_SILENT", "true")
        if not kwargs.get("save_dir"):
            kwargs["save_dir"] = "runs"
        if resume:
            kwargs["resume"] = resume
        if not kwargs.get("id") and not kwargs.get("version"):
            # chosen now rather than by wandb.init, so the run folder <save_dir>/<project>/<id> is known (and
            # checked, and locked) before anything is written
            # a W&B sweep agent names the run of each trial in WANDB_RUN_ID: that one, or a new one
            kwargs["id"] = os.environ.get("WANDB_RUN_ID") or new_run_id()
        ensure_writable_folder(kwargs["save_dir"], "the W&B folder (save_dir)")  # wandb.init needs it, and fails late
        self.evaluates_run = evaluates_run
        if job_type or evaluates_run:
            kwargs["job_type"] = job_type or "evaluation"
        if evaluates_run:
            kwargs["config"] = {**(kwargs.get("config") or {}), TRAINING_RUN_KEY: evaluates_run}
            group = group or training_group(Path(kwargs["save_dir"]), kwargs.get("project"), evaluates_run)
        init_extras = {key: value for key, value in (("tags", tags), ("group", group), ("notes", notes)) if value}
        # Lightning refuses log_model when offline; the artifacts are logged here instead, in both modes
        super().__init__(offline=offline, log_model=False, **init_extras, **kwargs)
        # Lightning passes anonymous=None to wandb.init, and wandb warns about the setting even when it is None;
        # there is no public way to leave it out (tests/test_train_canaries.py fails once Lightning stops)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self.is_offline = offline
        self.checkpoint_name = checkpoint_name
        self.run_started = False  # whether this logger has started (or joined) its W&B run
        self.stage_checkpoints = log_model
        self.watch_mode = watch
        self.watch_log_freq = watch_log_freq
        self.full_config_logged = False
        self._model_checkpoints: dict[int, ModelCheckpoint] = {}
        self._staged: dict[str, float] = {}

    @property
    def experiment(self) -> Any:
        """The W&B run, started (or joined) on first use."""
        run = super().experiment
        self.run_started = True
        return run

    @property
    def version(self) -> str | None:
        """The run folder's id (``<save_dir>/<project>/<version>``): an evaluation's figures go to the folder of the
        training run it evaluates; otherwise the W&B run id."""
        return self.evaluates_run or super().version

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        # SaveConfigToRun already put the whole resolved config on the run; Lightning's flattened copy of the
        # model and data hyperparameters would only add a second, partial set of top-level keys
        if not self.full_config_logged:
            super().log_hyperparams(params)

    @rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: Tensor | None = None) -> None:
        # Lightning calls this once per run with the LightningModule: the place to start wandb.watch
        if self.watch_mode:
            self.watch(model, log=self.watch_mode, log_freq=self.watch_log_freq, log_graph=False)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self.stage_checkpoints:
            self._model_checkpoints[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if not self.run_started:  # nothing was logged: no run to report (and none to start now)
            return
        if status == "success":
            for callback in self._model_checkpoints.values():
                try:
                    self._log_model_artifacts(callback)
                except Exception as err:  # the checkpoints are on disk either way: never fail the finished run
                    print(f"W&B: checkpoints not logged as artifacts ({type(err).__name__}: {err})", file=sys.stderr)
        run = self.experiment
        record_next_step(run)
        if self.is_offline or run.offline:
            folder = Path(run.dir.removesuffix("/files"))
            parts = sync_folders(folder, run.id, self.evaluates_run)
            print(f"W&B: offline run saved in {folder}; upload it with: {sync_command(parts)}", file=sys.stderr)
        elif run.url:
            print(f"W&B: run at {run.url}", file=sys.stderr)

    def _log_model_artifacts(self, callback: ModelCheckpoint) -> None:
        """Log the best and the last checkpoint (each once per file version) as versions of ``model-<run id>``
        (or of ``checkpoint_name``)."""
        import wandb

        best, last = callback.best_model_path, callback.last_model_path
        for path, aliases in ((best, ["best"]), (last, ["last", "latest"])):
            if not path or not Path(path).is_file():
                continue
            if path == best == last:
                aliases = ["best", "last", "latest"]
            modified = Path(path).stat().st_mtime
            if self._staged.get(path) == modified:
                continue
            metadata = artifact_metadata(path)
            metadata["monitor"] = callback.monitor
            name = self.checkpoint_name or f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=name, type="model", metadata=metadata)
            with staging_beside_the_run(Path(self.save_dir or "runs")):
                artifact.add_file(path, name=Path(path).name)
            # offline this only stages the files under the run folder; `wandb sync` uploads them. Never wait here.
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._staged[path] = modified


def offline_folders(wandb_dir: Path, run_id: str) -> list[Path]:
    """The offline folders of run ``run_id`` in ``wandb_dir``, oldest first: a resumed run has one per process,
    which ``wandb sync`` uploads one after the other in that order."""
    return sorted(wandb_dir.glob(f"offline-run-*-{run_id}"))


def sync_folders(folder: Path, run_id: str, training_run_id: str | None = None) -> list[Path]:
    """What ``wandb sync`` needs for the offline run ``run_id`` in ``folder``: the folders of the training run it
    evaluates first, if any (wandb skips those already synced), then every folder of this run, or ``folder``."""
    parts = offline_folders(folder.parent, run_id) or [folder]
    return (offline_folders(folder.parent, training_run_id) if training_run_id else []) + parts


def wandb_mode() -> str:
    """The mode a run starts in: ``WANDB_MODE`` when set, else online when logged in, else offline."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def record_next_step(run: Any) -> None:
    """Note the run's next history step in its folder (beside wandb's files, not uploaded): a later part of the run
    (``fit --ckpt_path``) starts after it."""
    with contextlib.suppress(OSError, MNISTLightningError, AttributeError, TypeError):
        write_atomically(Path(run.dir).parent / NEXT_STEP_FILE, str(int(run.step)))


def recorded_steps(wandb_dir: Path, run_id: str, current: Path) -> list[int]:
    """The next steps that the earlier offline folders of run ``run_id`` recorded when their process ended."""
    steps = []
    for folder in offline_folders(wandb_dir, run_id):
        if folder != current:
            with contextlib.suppress(OSError, ValueError):
                steps.append(int((folder / NEXT_STEP_FILE).read_text()))
    return steps


def sync_command(folders: list[Path]) -> str:
    """``wandb sync`` with ``folders``, each quoted for the shell (a path with spaces works as printed)."""
    return shlex.join(["wandb", "sync", *map(str, folders)])


def training_group(save_dir: Path, project: str | None, run_id: str) -> str:
    """The W&B group of training run ``run_id``: the one in its ``config.yaml``, else the run id (which then groups
    the run's evaluations)."""
    config = save_dir / (project or PROJECT_FOLDER) / run_id / "config.yaml"
    try:
        settings = yaml.safe_load(config.read_text()) or {}
        logger = (settings.get("trainer") or {}).get("logger") or {}
        loggers = logger if isinstance(logger, list) else [logger]
        for entry in loggers:
            group = ((entry or {}).get("init_args") or {}).get("group")
            if group:
                return str(group)
    except (OSError, yaml.YAMLError, AttributeError):
        pass  # no readable config next to the checkpoint: the id still links them
    return run_id


@contextlib.contextmanager
def staging_beside_the_run(save_dir: Path) -> Iterator[None]:
    """Stage artifact files in ``<save_dir>/wandb/data`` (not ``~/.local/share/wandb``), unless ``WANDB_DATA_DIR``
    says otherwise: an offline run's checkpoints then travel with ``runs/`` to the machine that syncs it."""
    if os.environ.get("WANDB_DATA_DIR"):
        yield
        return
    os.environ["WANDB_DATA_DIR"] = str((save_dir / "wandb" / "data").resolve())
    try:
        yield
    finally:
        os.environ.pop("WANDB_DATA_DIR", None)


class WatchHistograms(Callback):
    """Sends the ``wandb.watch`` histograms every ``watch_log_freq`` steps.

    wandb collects them in its hooks but sends them with the next logged row; this package logs its metrics once
    per epoch, so without this the histograms would appear once per epoch whatever ``watch_log_freq`` says.
    """

    def __init__(self, logger: AutoWandbLogger) -> None:
        self.logger = logger
        self.step_at_batch_start = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.step_at_batch_start = trainer.global_step

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # once per optimizer step: under gradient accumulation only the batch that ended one moved global_step
        stepped = trainer.global_step > self.step_at_batch_start
        if stepped and trainer.global_step % self.logger.watch_log_freq == 0:
            self.logger.experiment.log({"trainer/global_step": trainer.global_step})


class SaveConfigToRun(SaveConfigCallback):
    """Writes the resolved config next to the checkpoints and puts it, whole, in the W&B run config.

    The W&B config also gets ``num_parameters`` (the model's trainable parameters) and ``split_sizes`` (images in
    each data split). Every checkpoint records the W&B run id (so ``fit --ckpt_path`` resumes that run), the run's
    next history step (so that the resumed run's rows follow the earlier ones, offline too) and the metrics at the
    time it was saved (the model artifacts' metadata).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # validate and test of a checkpoint log to the run that trained it: its config.yaml stays as it was
        if self.already_saved or trainer.fast_dev_run or stage != "fit":
            return
        # on every rank: without a logger the folder comes from trainer.log_dir, a broadcast all ranks must join
        run_dir = Path(run_directory(trainer))
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            text = self.parser.dump(self.config, skip_none=False)
            write_atomically(run_dir / self.config_filename, text)
            config = yaml.safe_load(text)
            config["num_parameters"] = count_parameters(pl_module)
            sizes = getattr(trainer.datamodule, "split_sizes", None)
            if sizes:
                config["split_sizes"] = dict(sizes)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.config.update(config, allow_val_change=True)
                    if isinstance(logger, AutoWandbLogger):
                        logger.full_config_logged = True
        self.already_saved = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[RUN_ID_KEY] = str(logger.version)
                step = getattr(logger.experiment, "step", None)  # other DDP ranks hold a stand-in run
                if isinstance(step, int):
                    checkpoint[WANDB_STEP_KEY] = step
        checkpoint[METRICS_KEY] = {
            name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # offline, a resumed run is a new folder whose W&B history would start again at step 0: synced after the
        # first folder, its rows would land on steps the run already has. It goes on from the step the checkpoint
        # recorded instead (online, W&B already starts it after the run's last step)
        if trainer.state.fn != TrainerFn.FITTING or RUN_ID_KEY not in checkpoint or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and str(logger.version) == checkpoint[RUN_ID_KEY]:
                run = logger.experiment
                # rows logged after the checkpoint was saved (the epoch's end, the figures of the fit's end) are in
                # the step the earlier parts recorded when they ended; a part killed outright recorded none
                folder = Path(run.dir).parent
                step = max([checkpoint.get(WANDB_STEP_KEY) or 0, *recorded_steps(folder.parent, run.id, folder)])
                if run.step < step:
                    run.log({}, step=step, commit=False)  # sets the step without writing a row


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters of a classifier (``num_parameters`` when it has one)."""
    count = getattr(model, "num_parameters", None)
    return int(count) if count is not None else sum(p.numel() for p in model.parameters() if p.requires_grad)


def accepts_evaluates_run(logger: Any) -> bool:
    """True for a parsed logger entry whose class is an :class:`AutoWandbLogger` (it takes ``evaluates_run``)."""
    cls = logger_class(logger)
    return cls is not None and issubclass(cls, AutoWandbLogger)


def logger_class(logger: Any) -> type | None:
    """The class a parsed ``class_path``/``init_args`` logger entry names, or None."""
    if not isinstance(logger, (Namespace, dict)) or not logger.get("class_path"):
        return None
    module, _, name = str(logger.get("class_path")).rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def is_wandb_logger_config(logger: Any) -> bool:
    """True for a parsed ``class_path``/``init_args`` logger entry whose class is a WandbLogger."""
    cls = logger_class(logger)
    return cls is not None and issubclass(cls, WandbLogger)
