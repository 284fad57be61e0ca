"""``tune --workers N``: N processes in all on one study on this machine, this one and N - 1 worker processes it
starts, each with its share of the cores as torch threads (:mod:`mnist_lightning.threads`).

A worker is ``python -m mnist_lightning tune SPACE --study S --root R --n_trials N --resume --worker``: it joins the
study this process created, runs trials until the study's total is reached, and prints one line per trial like this
process; the summary, the result files and any advice come from this process, after every worker has ended.

Ctrl+C in a terminal reaches every process of the foreground group, so each worker stops its own trial (marked to be
run again by ``--resume``). A signal sent to this process alone is passed on to the workers still running after a
grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lightning.errors import MNISTLightningError
from mnist_lightning.interrupts import SIGNALS, exit_code

# how long workers get to stop by themselves after the signal that stopped this process (a terminal's Ctrl+C reaches
# them too), then after the signal passed on to them, before they are killed
GRACE_SECONDS = 10.0
STOP_SECONDS = 120.0
INTERRUPTED_CODES = tuple(exit_code(signum) for signum in SIGNALS)


class WorkerFailed(MNISTLightningError):
    """A worker process ended with an error (its own message or traceback is above, on the shared stderr)."""


@dataclass
class WorkerPool:
    """The worker processes this ``tune`` started."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, count: int, worker_args: list[str]) -> WorkerPool:
        """Start ``count`` workers with ``worker_args`` (``tune``'s arguments, with ``--threads``: each worker's share
        of the cores, which this process has also exported as ``OMP_NUM_THREADS`` by ``threads.share_threads``)."""
        command = [sys.executable, "-m", "mnist_lightning", "tune", *worker_args, "--resume", "--worker"]
        return cls([subprocess.Popen(command) for _ in range(count)])

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.processes}

    def check(self) -> None:
        """Raise :class:`WorkerFailed` if a worker has ended with an error (it is no use going on alone)."""
        for process in self.processes:
            code = process.poll()
            if code not in (None, 0):
                raise WorkerFailed(failure(process, code))

    def wait(self) -> None:
        """Wait for every worker to finish its trials; raise :class:`WorkerFailed` for one that ended with an error,
        KeyboardInterrupt for one stopped by a signal. SIGTERM while waiting is SIGTERMException (as in a trial), so
        that the workers are stopped rather than left running."""
        previous = signal.signal(signal.SIGTERM, raise_sigterm)
        try:
            codes = [process.wait() for process in self.processes]
        finally:
            signal.signal(signal.SIGTERM, previous)
        for process, code in zip(self.processes, codes, strict=True):
            if code in INTERRUPTED_CODES:
                raise KeyboardInterrupt
            if code != 0:
                raise WorkerFailed(failure(process, code))

    def stop(self, signum: int = signal.SIGINT, grace: bool = True) -> None:
        """End the workers: (with ``grace``) a grace period to stop by themselves, then ``signum``, then SIGKILL."""
        if grace:
            self.wait_until(time.time() + GRACE_SECONDS)
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signum)
        self.wait_until(time.time() + STOP_SECONDS)
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def wait_until(self, deadline: float) -> None:
        while time.time() < deadline and any(p.poll() is None for p in self.processes):
            time.sleep(0.1)


def raise_sigterm(signum: int, frame: object) -> None:
    raise SIGTERMException


def failure(process: subprocess.Popen[bytes], code: int) -> str:
    return f"tune worker process {process.pid} ended with exit code {code}; its error is above"
