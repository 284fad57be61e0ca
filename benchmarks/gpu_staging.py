"""What the device machine needs and lacks: MNIST found (or unpacked from ``.gz``) and wheels staged to carry.

``--stage`` runs here, before the device call; :func:`find_mnist` runs on the device. :data:`DEVICE_COMMAND` and
:data:`CARRY` are the one device call that runs gpu.py (benchmarks/gpu.md shows them, and a test checks it does).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mnist_lightning.data import DATA_DIR_ENV, RAW_FILES, raw_dir, verify_raw_files

REPO = Path(__file__).resolve().parents[1]
# the device image has torch, lightning, torchmetrics, onnx and the rest; these travel as wheels (see gpu.md)
STAGE_PACKAGES = ["jsonargparse", "docstring_parser", "typeshed_client", "flask", "itsdangerous", "blinker"]
CARRY = '[".whl", "data"]'
DEVICE_COMMAND = (
    "set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
    "python3 benchmarks/gpu.py --out $OUT 2>&1 | tee $OUT/gpu.log"
)


def find_mnist(data_dir: Path | None) -> Path:
    """A folder with ``MNIST/raw/*-ubyte``: the first of ``data_dir``, $MNIST_LIGHTNING_DATA_DIR, ./data and
    ../shared/mnist that has them, or that has the ``.gz`` files, which are then decompressed into a temporary folder.
    """
    env = os.environ.get(DATA_DIR_ENV)
    candidates = [Path(p) for p in (data_dir, env, REPO / "data", REPO.parent / "shared" / "mnist") if p]
    for folder in candidates:
        if all((raw_dir(folder) / name).is_file() for name in RAW_FILES):
            return folder.resolve()
        if all((raw_dir(folder) / f"{name}.gz").is_file() for name in RAW_FILES):
            target = Path(tempfile.gettempdir()) / "mnist-lightning-gpu"
            raw_dir(target).mkdir(parents=True, exist_ok=True)
            for name in RAW_FILES:
                with gzip.open(raw_dir(folder) / f"{name}.gz") as packed:
                    (raw_dir(target) / name).write_bytes(packed.read())
            verify_raw_files(target)
            print(f"[gpu] MNIST: decompressed {raw_dir(folder)}/*.gz into {raw_dir(target)}", flush=True)
            return target
    tried = ", ".join(str(raw_dir(f)) for f in candidates)
    raise SystemExit(f"gpu.py: no MNIST (*-ubyte or *-ubyte.gz) in {tried}; pass --data-dir or run --stage first")


def stage(mnist_gz: Path, packages: list[str]) -> None:
    """Put what the device machine lacks into git-ignored folders of this checkout: the gzipped MNIST into
    ``data/MNIST/raw`` and wheels of ``packages`` (the versions installed here, for Python 3.12) into ``.whl``."""
    target = raw_dir(REPO / "data")
    target.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        shutil.copyfile(raw_dir(mnist_gz) / f"{name}.gz", target / f"{name}.gz")
    wheels = REPO / ".whl"
    wheels.mkdir(exist_ok=True)
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    for package in packages:
        pinned = f"{package}=={importlib.metadata.version(package)}"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(wheels), pinned]
        command += [arg for p in platforms for arg in ("--platform", p)]
        subprocess.run(command, check=True)
    size = sum(p.stat().st_size for p in [*wheels.iterdir(), *target.iterdir()]) / 2**20
    print(f"staged {target} and {len(list(wheels.iterdir()))} wheels in {wheels} ({size:.1f} MiB to carry)")
    print(f"device command (carry {CARRY}):\n{DEVICE_COMMAND}")
