"""benchmarks/results.py's fits side by side: each preset and seed in its own process, at most ``--parallel`` at once,
each process with its share of the cores as torch threads (``--threads``, then ``OMP_NUM_THREADS``, win).

Threads that oversubscribe the cores spin and wait on each other (mnist_lightning/threads.py has the figures), so N
processes on C cores get C // N threads each. The children write their rows into the same JSON and markdown, merged
under results.py's lock.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_lightning.threads import child_environment

SCRIPT = Path(__file__).resolve().with_name("results.py")


def child_command(preset: str, seed: int | None, args: argparse.Namespace) -> list[str]:
    """This script for one preset and seed, writing into the same JSON and markdown (merged under their lock)."""
    command = [sys.executable, str(SCRIPT), "--presets", preset]
    command += ["--results", str(args.results), "--output", str(args.output)]
    if seed is not None:
        command += ["--seeds", str(seed)]
    if args.max_epochs:
        command += ["--max-epochs", str(args.max_epochs)]
    if args.keep:
        command += ["--keep", str(args.keep)]
    if args.load:
        command += ["--load", args.load]
    if args.tiny:
        command.append("--tiny")
    return command


def run_side_by_side(
    jobs: Sequence[tuple[str, int | None]], args: argparse.Namespace, start: Any = subprocess.Popen
) -> list[str]:
    """Each (preset, seed) in its own process, at most ``args.parallel`` at once; the jobs that failed.

    Each process gets its share of the cores as torch threads (``--threads``, then ``OMP_NUM_THREADS``, win):
    threads that oversubscribe the cores spin and wait on each other (mnist_lightning/threads.py has the figures).
    """
    processes = min(args.parallel, len(jobs))
    env = child_environment(processes, args.threads)
    print(f"results.py: {len(jobs)} fits, {processes} at a time, {env['OMP_NUM_THREADS']} thread(s) each", flush=True)
    waiting, running, failed = list(jobs), [], []
    try:
        while waiting or running:
            while waiting and len(running) < processes:
                preset, seed = waiting.pop(0)
                name = preset if seed is None else f"{preset} seed {seed}"
                running.append((name, start(child_command(preset, seed, args), env=env)))
            time.sleep(0.1)
            for name, process in list(running):
                if process.poll() is not None:
                    running.remove((name, process))
                    if process.returncode != 0:
                        failed.append(name)
    finally:  # interrupted (Ctrl-C reaches the children too) or failed: no child is left running on its own
        for _, process in running:
            if process.poll() is None:
                process.terminate()
    return failed
