"""The checkpoint layer: the same checkpoint for model, split and weights however it is named, classes checked
before anything is imported, the packaged defaults from Python, and canaries for the Lightning internals we touch."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, metric, run_cli
from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningCLI

from mnist_lightning.checkpoints import find_last, inspect_checkpoint, load_classifier
from mnist_lightning.cli import MNISTLightningCLI
from mnist_lightning.models import MLPClassifier, MNISTClassifier
from mnist_lightning.tracking import AutoWandbLogger

FAST = ("--trainer.limit_train_batches", "8", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false")


def only_checkpoint(root: Path, pattern: str = "best-*.ckpt") -> Path:
    (found,) = root.rglob(pattern)
    return found


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """Run A under ./runs (W&B, width 32, 5,000 validation images, its validation cut to 4 batches) and run B
    under ./out (no logger, width 16, 700 validation images, validated whole); A's last.ckpt is the newest."""
    folder = tmp_path_factory.mktemp("two_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MNIST_LIGHTNING_DATA_DIR", str(mnist_dir))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        run_cli(
            "fit", "--model", "MLPClassifier", "--model.hidden_sizes", "[16]", "--data.val_size", "700",
            "--trainer.default_root_dir=out", "--trainer.logger", "false", *FAST,
        )  # fmt: skip
        run_cli(
            "fit", "--model", "MLPClassifier", "--model.hidden_sizes", "[32]", "--trainer.limit_val_batches", "4",
            *FAST,
        )  # fmt: skip
    newest = only_checkpoint(folder / "runs", "last.ckpt")
    os.utime(newest, (newest.stat().st_mtime + 60,) * 2)
    return folder


@pytest.mark.parametrize(
    "spelling",
    [
        ["--ckpt_path", "last", "--trainer.default_root_dir", "out"],
        ["--ckpt_path", "last", "--trainer.default_root_dir=out"],
        ["--ckpt_path=last", "--config", "root.yaml"],
        ["--config", "root_and_last.yaml"],
        ["--ckpt_path", "BEST"],
        ["--ckpt_path=BEST"],
    ],
    ids=["root", "root=", "config", "config-ckpt", "path", "path="],
)
def test_every_spelling_validates_the_run_it_names(
    two_runs: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, spelling: list[str]
) -> None:
    monkeypatch.chdir(two_runs)
    best = only_checkpoint(two_runs / "out")
    (two_runs / "root.yaml").write_text("trainer:\n  default_root_dir: out\n")
    (two_runs / "root_and_last.yaml").write_text("ckpt_path: last\ntrainer:\n  default_root_dir: out\n")
    args = [str(best) if a == "BEST" else a.replace("BEST", str(best)) for a in spelling]
    result = run_cli("validate", *args, "--trainer.logger", "false")
    expected = float(best.stem.split("val_acc")[1])
    # run B's checkpoint, its width and its 700-image split: the accuracy written in its file name, to 4 places
    assert metric(result.stdout, "val/acc") == pytest.approx(expected, abs=1e-4)
    assert "Traceback" not in result.stderr


def test_a_model_given_beside_a_checkpoint_that_does_not_fit_is_one_line(two_runs: Path, isolated: Path) -> None:
    best = only_checkpoint(two_runs / "out")
    for model in ([], ["--model", "MLPClassifier"]):  # a setting of the checkpoint's model, or of a named one
        result = run_cli("validate", "--ckpt_path", str(best), *model, "--model.hidden_sizes=[64]", check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "hidden_sizes=[16]" in result.stderr and "hidden_sizes=[64]" in result.stderr


def checkpoint_naming(source: Path, target: Path, class_path: str, **extra: object) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = class_path
    checkpoint["hyper_parameters"].update(extra)
    torch.save(checkpoint, target)
    return target


@pytest.mark.parametrize(
    "command",
    [
        ["test"],
        ["validate"],
        ["predict"],
        ["serve", "--port", "0"],
        ["export", "--output", "model.onnx"],
    ],
    ids=["test", "validate", "predict", "serve", "export"],
)
def test_a_class_that_no_longer_exists_is_one_line_and_nothing_is_imported(
    two_runs: Path, isolated: Path, command: list[str]
) -> None:
    # a module beside the user that would leave a mark if anything imported it
    (isolated / "planted.py").write_text("open('imported', 'w').close()\nclass OldNet: pass\n")
    renamed = checkpoint_naming(only_checkpoint(two_runs / "out"), isolated / "old.ckpt", "planted.OldNet")
    result = run_cli(*command, "--ckpt_path", str(renamed), check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("mnist-lightning: error")]
    assert "planted.OldNet" in line and "does not have" in line
    assert not (isolated / "imported").exists()
    assert not (isolated / "model.onnx").exists()


def test_a_setting_this_version_does_not_know_is_named_whole(two_runs: Path, isolated: Path) -> None:
    source = only_checkpoint(two_runs / "out")
    newer = checkpoint_naming(source, isolated / "newer.ckpt", "mnist_lightning.MLPClassifier", gated_units=4)
    for command in (["test"], ["export"]):
        result = run_cli(*command, "--ckpt_path", str(newer), check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "gated_units=4" in result.stderr and "does not know" in result.stderr


def test_load_from_checkpoint_works_for_the_class_and_the_generic_loader(two_runs: Path) -> None:
    best = only_checkpoint(two_runs / "out")
    for model in (MLPClassifier.load_from_checkpoint(best), load_classifier(best)):
        assert isinstance(model, MLPClassifier) and model.hparams.hidden_sizes == [16]
    info = inspect_checkpoint(best)
    assert info.class_name == "MLPClassifier" and info.data_settings["val_size"] == 700
    assert info.wandb_run_id is None and info.run_id == best.parent.parent.name
    assert inspect_checkpoint(only_checkpoint(two_runs / "runs")).wandb_run_id is not None


def test_python_cli_with_run_false_gets_the_packaged_defaults(isolated: Path) -> None:
    cli = MNISTLightningCLI(args=["--model", "MLPClassifier"], run=False)
    assert cli.config.seed_everything == 42
    assert isinstance(cli.trainer.logger, AutoWandbLogger)
    assert Path(cli.trainer.default_root_dir) == Path("runs")
    assert cli.trainer.max_epochs == 10


class BatchOrder(Callback):
    def __init__(self) -> None:
        self.first_labels: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first_labels.append(batch[1].tolist())


def test_canary_lightning_still_calls_set_epoch_so_epochs_are_shuffled_differently(isolated: Path) -> None:
    cli = MNISTLightningCLI(
        args=["--config", str(CONFIGS / "linear.yaml"), "--trainer.logger", "false", *FAST, "--trainer.max_epochs",
              "2", "--trainer.limit_val_batches", "1"],
        run=False,
    )  # fmt: skip
    order = BatchOrder()
    cli.trainer.callbacks.append(order)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(order.first_labels) == 2 and order.first_labels[0] != order.first_labels[1]


def test_canary_lightning_cli_still_calls_the_ckpt_hparams_merge_we_replace() -> None:
    # MNISTLightningCLI._parse_ckpt_path must keep replacing LightningCLI's merge of the checkpoint's hyperparameters
    # over the user's arguments; if Lightning renames or stops calling it, this fails (see cli.py)
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
    assert MNISTLightningCLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path


def test_resume_keeps_the_best_validation_accuracy(isolated: Path) -> None:
    args = ["fit", "--config", str(CONFIGS / "linear.yaml"), "--trainer.logger", "false", *FAST]
    run_cli(*args, "--trainer.limit_val_batches", "10")
    first = torch.load(find_last(isolated / "runs"), weights_only=True)["val_acc_best"]
    cli = MNISTLightningCLI(args=[a for a in args[1:] if a != "fit"] + ["--trainer.max_epochs", "2",
                                  "--trainer.limit_val_batches", "1"], run=False)  # fmt: skip
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(find_last(isolated / "runs")))
    # one validation batch after a tiny epoch would score below the first run's best: the best stays
    assert float(cli.model.val_acc_best.compute()) >= first


def test_a_scheduled_run_resumed_for_more_epochs_is_refused_before_training(isolated: Path) -> None:
    args = ["fit", "--config", str(CONFIGS / "linear.yaml"), "--model.scheduler", "onecycle", "--trainer.logger",
            "false", *FAST, "--trainer.limit_val_batches", "2"]  # fmt: skip
    run_cli(*args)
    last = find_last(isolated / "runs")
    before = last.read_bytes()
    result = run_cli(*args, "--trainer.max_epochs", "3", "--ckpt_path", "last", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "schedule was laid out for 8 steps" in result.stderr and "--trainer.max_epochs 1" in result.stderr
    assert last.read_bytes() == before


def test_every_classifier_is_known_to_the_checkpoint_layer() -> None:
    from mnist_lightning.checkpoints import classifier_classes

    names = {cls.__name__ for cls in classifier_classes()}
    assert {"MLPClassifier", "CNNClassifier", "ViTClassifier", "TransformerEncoderClassifier", "SpeedrunCNN"} <= names
    assert MNISTClassifier.__name__ not in names
