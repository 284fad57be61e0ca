"""What the command skips to start and finish faster, and that skipping it changes nothing else: wandb is not
imported for ``--help`` or for a ``fit`` with the logger off, a raw file's MD5 is not checked twice while the file is
unchanged (and is checked again once it changes), and defaults.yaml left out for a logger-off command line gives the
same configuration."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_lightning.cli.lightning_cli import MNISTLightningCLI, defaults_without_logger
from mnist_lightning.data import files
from mnist_lightning.data.files import MNISTDataError, load_raw_files, raw_dir, verify_raw_files
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("wandb", "optuna", "onnx", "flask")


def modules_left_after(argv: list[str]) -> set[str]:
    """Which of :data:`HEAVY` a new process running ``main(argv)`` has imported when the command ends."""
    probe = (
        "import sys\n"
        "from mnist_lightning.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exit_:\n"
        "    assert exit_.code in (0, None), exit_.code\n"
        f"print('IMPORTED', [name for name in {HEAVY!r} if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=subprocess_env(), timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("IMPORTED"))
    return set(eval(line.removeprefix("IMPORTED ")))


def test_help_imports_no_wandb() -> None:
    assert modules_left_after(["--help"]) == set()


def test_a_fit_with_the_logger_off_imports_no_wandb(tmp_path: Path) -> None:
    argv = [
        "fit", "--config", "mlp_128_64", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger", "false",
    ]  # fmt: skip
    assert modules_left_after(argv) == set()


@pytest.mark.parametrize(
    ("argv", "left_out"),
    [
        (["fit", "--trainer.logger", "false"], True),
        (["fit", "--trainer.logger=False"], True),
        (["fit", "--config", "mlp_128_64", "--trainer.logger", "false"], True),
        (["fit", "--trainer.logger", "false", "--config", "mlp_128_64"], False),  # a config file after it may set one
        (["fit", "--trainer.logger", "false", "--trainer.logger.init_args.group", "g"], False),
        (["fit", "--trainer.logger", "true"], False),
        (["fit"], False),
    ],
)
def test_defaults_yaml_is_left_out_only_when_the_logger_is_switched_off_last(argv: list[str], left_out: bool) -> None:
    assert (defaults_without_logger(argv) is not None) == left_out


def test_left_out_defaults_give_the_same_configuration() -> None:
    preset = str(REPO / "configs" / "mlp_128_64.yaml")
    # the same settings; the second command line reads defaults.yaml as a file (the logger is switched off before
    # the preset, which sets none), the first one as parser defaults
    fast = MNISTLightningCLI(args=["--config", preset, "--trainer.logger", "false"], run=False)
    read = MNISTLightningCLI(args=["--trainer.logger", "false", "--config", preset], run=False)
    assert fast.defaults_without_logger and not read.defaults_without_logger
    assert fast.parser.dump(fast.config) == read.parser.dump(read.config)


@pytest.fixture
def mnist_copy(mnist_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(mnist_dir / "MNIST", copy / "MNIST")
    return copy


def count_md5(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = hashlib.md5

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(files.hashlib, "md5", counted)
    return calls


def test_unchanged_files_are_md5_checked_once(mnist_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_md5(monkeypatch)
    verify_raw_files(mnist_copy)  # prepare_data
    assert calls[0] == 4
    load_raw_files(mnist_copy)  # setup
    assert calls[0] == 4


def test_a_file_changed_after_its_check_is_checked_again(mnist_copy: Path) -> None:
    verify_raw_files(mnist_copy)
    labels = raw_dir(mnist_copy) / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10  # same size, same header: only the MD5 tells
    labels.write_bytes(bytes(data))
    with pytest.raises(MNISTDataError, match=r"t10k-labels-idx1-ubyte.*MD5"):
        load_raw_files(mnist_copy)
