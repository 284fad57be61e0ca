"""Run folders: every training run gets ``<root>/<project>/<run id>/`` (checkpoints, config.yaml, media), with or
without a logger, so two runs never write into each other's files."""

from __future__ import annotations

import os
import secrets
import string

import lightning as L

PROJECT_FOLDER = "mnist-lightning"
# DDP ranks that Lightning starts as new processes re-run the command: they read the id rank 0 chose from here
RUN_ID_ENV = "MNIST_LIGHTNING_RUN_ID"
RUN_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """A fresh 8-character run id (W&B's format), or, in a DDP rank started by rank 0, the one rank 0 chose."""
    inherited = os.environ.get(RUN_ID_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return inherited
    run_id = "".join(secrets.choice(RUN_ID_ALPHABET) for _ in range(8))
    os.environ[RUN_ID_ENV] = run_id
    return run_id


def run_directory(trainer: L.Trainer) -> str:
    """The folder of this run: ``<save_dir>/<project>/<run id>`` for a logger, else the checkpoints' parent."""
    logger = trainer.logger
    if logger is not None and logger.save_dir is not None and logger.name is not None:
        return os.path.join(logger.save_dir, str(logger.name), str(logger.version))
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    if dirpath and os.path.basename(os.path.normpath(dirpath)) == "checkpoints":
        return os.path.dirname(os.path.normpath(dirpath))
    return trainer.log_dir or trainer.default_root_dir
