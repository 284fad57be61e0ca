"""Shared fixtures: the real MNIST copy, wandb offline in a temporary folder, a fresh working directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_lightning.data import DATA_DIR_ENV, RAW_FILES, raw_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _find_mnist() -> Path:
    candidates = [os.environ.get(DATA_DIR_ENV), REPO.parent / "shared" / "mnist", REPO / "data"]
    for candidate in filter(None, candidates):
        if all((raw_dir(candidate) / name).is_file() for name in RAW_FILES):
            return Path(candidate).resolve()
    raise pytest.UsageError(
        f"the tests need the real MNIST files: set {DATA_DIR_ENV} to a folder holding MNIST/raw/*-ubyte"
    )


MNIST_DIR = _find_mnist()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder that holds ``MNIST/raw`` (read-only: never write into it)."""
    return MNIST_DIR


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own folder with wandb offline and all of wandb's files kept there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(MNIST_DIR))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        folder = tmp_path / ".wandb" / var.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(var, str(folder))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    monkeypatch.delenv("MNIST_LIGHTNING_DEBUG", raising=False)
    return tmp_path


def subprocess_env() -> dict[str, str]:
    """The test's environment without ``WANDB_SERVICE``: a wandb run made inside the pytest process leaves it set,
    and a child process would then hand its run to the parent's wandb service instead of writing it itself."""
    return {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}


def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed ``mnist-lightning`` console script in the current folder."""
    exe = Path(sys.executable).with_name("mnist-lightning")
    # its own process group, so that a timeout also ends the processes it started (the other DDP ranks)
    with subprocess.Popen(
        [str(exe), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"mnist-lightning {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def metric(output: str, name: str) -> float:
    """A metric from Lightning's results table, plain or drawn with box characters (when ``rich`` is installed)."""
    match = re.search(rf"{re.escape(name)}\s*[│┃|]?\s+([0-9.]+(?:e-?\d+)?)", output)
    assert match, f"{name} not in output:\n{output[-2000:]}"
    return float(match.group(1))
