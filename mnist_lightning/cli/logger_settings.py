"""Logger settings the CLI fills in after parsing, before any logger exists.

A W&B logger without a folder of its own writes under ``--trainer.default_root_dir`` (one root for everything a run
writes), and a run started from a checkpoint logs to the W&B run that wrote it (``fit``) or next to it.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

from mnist_lightning.tracking import accepts_evaluates_run, is_wandb_logger_config


def logger_configs(section: Namespace) -> list[Namespace]:
    """The configured loggers (``--trainer.logger``, one or a list) that name a class."""
    logger = section.get("trainer.logger")
    loggers = logger if isinstance(logger, list) else [logger]
    return [lg for lg in loggers if isinstance(lg, (Namespace, dict)) and lg.get("class_path")]


def logger_folders(section: Namespace) -> list[Path]:
    """The folders that the configured loggers were given (``save_dir``, or W&B's ``dir``)."""
    folders = (logger.get("init_args.save_dir") or logger.get("init_args.dir") for logger in logger_configs(section))
    return [Path(folder) for folder in folders if folder]


def follow_root_dir(section: Namespace) -> None:
    """A W&B logger without its own ``save_dir`` writes under ``trainer.default_root_dir``: one root for a run."""
    root = section.get("trainer.default_root_dir") or "."
    for logger in logger_configs(section):
        if is_wandb_logger_config(logger) and not logger.get("init_args.save_dir") and not logger.get("init_args.dir"):
            logger["init_args.save_dir"] = str(root)


def continue_wandb_run(section: Namespace, run_id: str, resume: bool, job_type: str | None = None) -> None:
    """Log to the W&B run that wrote the checkpoint: ``fit`` continues it; ``validate``/``test`` log to a run of
    their own in its group, linked to it (see ``AutoWandbLogger``'s ``evaluates_run``)."""
    for logger in logger_configs(section):
        if not is_wandb_logger_config(logger):
            continue
        if logger.get("init_args.id") or logger.get("init_args.version"):
            return
        if not resume:
            logger["init_args.id"] = run_id
        elif accepts_evaluates_run(logger):
            logger["init_args.evaluates_run"] = run_id
            logger["init_args.job_type"] = logger.get("init_args.job_type") or job_type
        else:  # Lightning's own WandbLogger
            logger["init_args.id"] = run_id
            logger["init_args.resume"] = "allow"
