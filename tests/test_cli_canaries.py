"""Canaries for the Lightning internals the command line relies on: each fails when Lightning stops behaving the way
the code in mnist_lightning/cli/ and mnist_lightning/checkpoints.py assumes (lightning is pinned below 2.7)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from unittest import mock

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel

from mnist_lightning.checkpoints import inspect_checkpoint
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.models import MLPClassifier

QUIET = [
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


class RecordingCLI(MNISTLightningCLI):
    """MNISTLightningCLI that notes which of its hooks Lightning calls, in order."""

    calls: list[str]

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self.calls = ["parse_arguments"]
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        self.calls.append("_parse_ckpt_path")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        self.calls.append("instantiate_classes")
        super().instantiate_classes()


def test_canary_lightning_cli_calls_parse_ckpt_path_between_parsing_and_instantiation() -> None:
    # MNISTLightningCLI._parse_ckpt_path replaces LightningCLI's merge of a checkpoint's hyperparameters over the
    # parsed arguments (parse_arguments has made them defaults instead): the merge must happen exactly there
    cli = RecordingCLI(args=["--model", "MLPClassifier", *QUIET], run=False)
    assert cli.calls == ["parse_arguments", "_parse_ckpt_path", "instantiate_classes"]


def test_canary_lightning_cli_records_the_model_class_path_that_checkpoints_are_read_by(isolated: Path) -> None:
    # checkpoints.inspect_checkpoint finds a checkpoint's class in the hyperparameter "_class_path", which
    # LightningCLI's instantiator (not the model) adds to the model's hparams
    cli = MNISTLightningCLI(args=["--model", "MLPClassifier", "--model.hidden_sizes", "[8]", *QUIET], run=False)
    assert cli.model.hparams["_class_path"].rsplit(".", 1)[-1] == "MLPClassifier"
    cli.trainer.strategy.connect(cli.model)
    cli.trainer.save_checkpoint(isolated / "model.ckpt")
    info = inspect_checkpoint(isolated / "model.ckpt")
    assert info.class_name == "MLPClassifier" and info.model_settings["hidden_sizes"] == [8]
    assert MLPClassifier.load_from_checkpoint(isolated / "model.ckpt", weights_only=True).hparams.hidden_sizes == [8]


class RecordingTrainer(Trainer):
    """A Trainer whose ``test`` only notes the checkpoint it was asked to restore."""

    tested_ckpt_paths: list[Any] = []

    def test(self, *args: Any, ckpt_path: Any = "unset", **kwargs: Any) -> list[dict[str, float]]:
        RecordingTrainer.tested_ckpt_paths.append(ckpt_path)
        return []


class EnsembleLikeCLI(LightningCLI):
    def before_test(self) -> None:
        self.config_init[self.subcommand].ckpt_path = None  # what MNISTLightningCLI.build_ensemble does


def test_canary_lightning_cli_runs_the_subcommand_with_the_ckpt_path_of_config_init_after_the_before_hook() -> None:
    # --ensemble/--tta load every member before the run and clear ckpt_path in config_init (cli/ensembles.py):
    # Lightning must read the subcommand's arguments from config_init after before_<subcommand>, or it would try to
    # restore the first member into the ensemble
    RecordingTrainer.tested_ckpt_paths = []
    with mock.patch.object(sys, "argv", ["mnist-lightning"]):  # pytest's own arguments are not the CLI's
        EnsembleLikeCLI(BoringModel, trainer_class=RecordingTrainer, args=["test", "--ckpt_path", "first.ckpt", *QUIET])
    assert RecordingTrainer.tested_ckpt_paths == [None]
