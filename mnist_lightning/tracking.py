"""Weights & Biases: a logger that goes offline by itself, and the resolved CLI config on the run page."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_lightning.callbacks import write_atomically


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
    """

    def __init__(self, *, offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE")
            offline = mode in ("offline", "dryrun") if mode else not wandb_logged_in()
        # wandb's own banner is replaced by the one line printed in finalize()
        os.environ.setdefault("WANDB_SILENT", "true")
        kwargs.setdefault("save_dir", "runs")
        Path(kwargs["save_dir"]).mkdir(parents=True, exist_ok=True)
        super().__init__(offline=offline, **kwargs)
        self.is_offline = offline

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is None:
            return
        run = self._experiment
        if self.is_offline or getattr(run.settings, "_offline", False):
            print(
                f"W&B: offline run saved in {run.dir.removesuffix('/files')}; "
                f"upload it with: wandb sync {run.dir.removesuffix('/files')}",
                file=sys.stderr,
            )
        else:
            print(f"W&B: run at {run.url}", file=sys.stderr)


class SaveConfigToRun(SaveConfigCallback):
    """Writes the resolved config next to the checkpoints and puts it, whole, in the W&B run config."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or trainer.fast_dev_run:
            return
        if trainer.is_global_zero:
            run_dir = Path(run_directory(trainer))
            run_dir.mkdir(parents=True, exist_ok=True)
            text = self.parser.dump(self.config, skip_none=False)
            write_atomically(run_dir / self.config_filename, text)
            config = yaml.safe_load(text)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.config.update(config, allow_val_change=True)
        self.already_saved = True


def run_directory(trainer: L.Trainer) -> str:
    """The folder of this run: ``<save_dir>/<project>/<run id>`` for W&B, else the trainer's log dir."""
    logger = trainer.logger
    if logger is not None and logger.save_dir is not None and logger.name is not None:
        return os.path.join(logger.save_dir, str(logger.name), str(logger.version))
    return trainer.log_dir or trainer.default_root_dir
