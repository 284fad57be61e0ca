"""The data folder travels with the checkpoint: a model trained with ``--data.data_dir DIR`` is validated, tested and
predicted on the MNIST in DIR while DIR still holds it, without the option; a folder the user gives still wins; once
DIR is gone the default folder is read (and a line says so). Also: a data folder that does not exist is neither
suggested back as the fix nor created.

``$MNIST_LIGHTNING_DATA_DIR`` points at an empty folder in these tests, so reading it fails: a command that succeeds
read the trained folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from mnist_lightning.checkpoints import data_dir_to_evaluate, inspect_checkpoint
from mnist_lightning.data import DATA_DIR_ENV, RAW_FILES, raw_dir

QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
SHORT = [
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "1",
    "--trainer.limit_predict_batches",
    "1",
]
EVALUATE = {
    "validate": ["validate", *QUIET, "--trainer.limit_val_batches", "1"],
    "test": ["test", *QUIET, "--trainer.limit_test_batches", "1"],
    "predict": ["predict", *QUIET, "--trainer.limit_predict_batches", "1"],
}


def linked_mnist(folder: Path, mnist_dir: Path) -> Path:
    """A data folder whose MNIST/raw links to the real files (read-only, nothing copied)."""
    raw_dir(folder).mkdir(parents=True)
    for name in RAW_FILES:
        (raw_dir(folder) / name).symlink_to(raw_dir(mnist_dir) / name)
    return folder


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> tuple[Path, Path]:
    """A checkpoint fitted (once for this file) on ``<tmp>/my mnist`` given as a relative ``--data.data_dir=`` path,
    while ``$MNIST_LIGHTNING_DATA_DIR`` is an empty folder; returns (checkpoint, data folder)."""
    folder = tmp_path_factory.mktemp("fitted")
    data = linked_mnist(folder / "my mnist", mnist_dir)
    (folder / "empty").mkdir()
    fit = ["fit", "--model", "MLPClassifier", "--model.hidden_sizes", "[16]", "--data.data_dir=my mnist"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv(DATA_DIR_ENV, str(folder / "empty"))
        run_cli(
            *fit,
            "--data.download",
            "false",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            *QUIET,
            *SHORT,
        )
    (checkpoint,) = (folder / "runs").rglob("last.ckpt")
    return checkpoint, data


@pytest.fixture
def trained(
    fitted: tuple[Path, Path], isolated: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """The fitted checkpoint and its data folder (linked again if a test took it away), with
    ``$MNIST_LIGHTNING_DATA_DIR`` an empty folder."""
    checkpoint, data = fitted
    shutil.rmtree(data, ignore_errors=True)
    linked_mnist(data, mnist_dir)
    (isolated / "empty").mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(isolated / "empty"))
    return checkpoint, data


@pytest.mark.parametrize("command", list(EVALUATE))
def test_evaluation_reads_the_folder_the_checkpoint_was_trained_on(
    trained: tuple[Path, Path], isolated: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    checkpoint, data = trained
    elsewhere = isolated / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # fit was given a relative folder: it is recorded as the absolute one
    result = run_cli(*EVALUATE[command], "--ckpt_path", str(checkpoint), check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"reading MNIST from {data}, the folder the checkpoint was trained on" in result.stderr


def test_the_recorded_folder_is_absolute_and_used_only_while_it_holds_mnist(trained: tuple[Path, Path]) -> None:
    checkpoint, data = trained
    info = inspect_checkpoint(checkpoint)
    assert info.trained_data_dir == str(data)
    assert data_dir_to_evaluate(info) == str(data)
    assert data_dir_to_evaluate(info, "/chosen") == "/chosen"
    (raw_dir(data) / "t10k-images-idx3-ubyte").unlink()
    assert data_dir_to_evaluate(info) is None


@pytest.mark.parametrize("spelling", ["option", "equals", "config file", "subcommand config file"])
def test_a_folder_the_user_gives_wins_over_the_trained_one(
    trained: tuple[Path, Path], isolated: Path, spelling: str
) -> None:
    checkpoint, _ = trained
    given = str(isolated / "empty")
    (isolated / "data.yaml").write_text(yaml.safe_dump({"data": {"data_dir": given}}))
    args = {
        "option": ["validate", "--data.data_dir", given],
        "equals": ["validate", f"--data.data_dir={given}"],
        "config file": ["validate", "--config", "data.yaml"],
        "subcommand config file": ["--config", "top.yaml", "validate"],
    }[spelling]
    (isolated / "top.yaml").write_text(yaml.safe_dump({"validate": {"data": {"data_dir": given}}}))
    result = run_cli(*args, "--ckpt_path", str(checkpoint), *QUIET, "--trainer.limit_val_batches", "1", check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"MNIST files missing in {raw_dir(given)}" in result.stderr.strip().splitlines()[-1]
    assert "reading MNIST from" not in result.stderr


def test_once_the_trained_folder_is_gone_the_default_is_read(
    trained: tuple[Path, Path], mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint, data = trained
    shutil.rmtree(data)
    result = run_cli(*EVALUATE["test"], "--ckpt_path", str(checkpoint), check=False)
    assert result.returncode == 1
    note = f"the checkpoint was trained on MNIST in {data}, which no longer holds it"
    assert note in result.stderr and "--data.data_dir DIR to choose" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mnist-lightning: error: MNIST files missing in")

    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    result = run_cli(*EVALUATE["test"], "--ckpt_path", str(checkpoint), check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_resuming_a_copied_run_trains_on_the_same_folder_and_refreshes_its_last(
    trained: tuple[Path, Path], isolated: Path
) -> None:
    checkpoint, data = trained
    run = shutil.copytree(checkpoint.parent.parent, isolated / "copied run")
    resume = ["fit", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--trainer.max_epochs", "2"]
    result = run_cli(*resume, "--trainer.limit_train_batches", "2", *QUIET, *SHORT, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"reading MNIST from {data}" in result.stderr
    # the run goes on in its copied folder, whose last.ckpt is refreshed (not kept beside a new last-v1.ckpt)
    assert sorted(p.name for p in (run / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]
    assert inspect_checkpoint(run / "checkpoints" / "last.ckpt").epoch == 1


def test_the_notebook_helper_reads_the_trained_folder(trained: tuple[Path, Path]) -> None:
    from mnist_lightning.notebook import load_datamodule

    checkpoint, data = trained
    assert load_datamodule(checkpoint).data_dir == data


@pytest.mark.parametrize("download", ["true", "false"])
def test_a_data_folder_that_does_not_exist_is_not_suggested_or_created(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, download: str
) -> None:
    import torchvision.datasets

    # the download fails at once (nothing listens on port 9 of this machine)
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    missing = isolated / "my data" / "mnist"
    result = run_cli(
        "fit",
        "--model",
        "MLPClassifier",
        "--data.data_dir",
        str(missing),
        "--data.download",
        download,
        *QUIET,
        check=False,
    )
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert line.startswith(f"mnist-lightning: error: MNIST files missing in {raw_dir(missing)}")
    assert f"the data folder {missing} does not exist" in line
    assert "put them" not in line and "in that folder" not in line
    assert not (isolated / "my data").exists()
