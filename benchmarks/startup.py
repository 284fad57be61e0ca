"""How long ``mnist-lightning`` takes to start, and how much of it is this project's own.

Each command runs ``--repeats`` times in a fresh process (imports are cached by the OS after the first run, as for a
user who runs the command twice); the table gives the median wall time and the share above ``import lightning``.

    python benchmarks/startup.py             # 5 runs of each
    python benchmarks/startup.py --repeats 9
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PYTHON = sys.executable
CLI = str(Path(sys.executable).with_name("mnist-lightning"))
COMMANDS = {
    "import torch": [PYTHON, "-c", "import torch"],
    "import lightning.pytorch": [PYTHON, "-c", "import lightning.pytorch"],
    "import lightning.pytorch.cli (jsonargparse)": [PYTHON, "-c", "import lightning.pytorch.cli"],
    "import mnist_lightning.cli": [PYTHON, "-c", "import mnist_lightning.cli"],
    "mnist-lightning --help": [CLI, "--help"],
    "mnist-lightning fit --help": [CLI, "fit", "--help"],
}


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=os.environ | {"WANDB_MODE": "offline"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    subprocess.run(COMMANDS["mnist-lightning --help"], capture_output=True)  # warm the OS file cache
    seconds = {name: median_seconds(command, options.repeats) for name, command in COMMANDS.items()}
    base = seconds["import lightning.pytorch"]
    load = os.getloadavg()[0]
    print(f"Start-up, median of {options.repeats} runs, {dt.date.today()}, {os.cpu_count()} CPUs, load {load:.1f}\n")
    print("| command | seconds | above `import lightning.pytorch` |")
    print("|---|---:|---:|")
    for name, value in seconds.items():
        print(f"| `{name}` | {value:.2f} | {value - base:+.2f} |")


if __name__ == "__main__":
    main()
