"""Slow jobs that run as their own processes (the benchmark scripts' tiny modes, the notebooks), started in the
background when the session starts, one after another, so that they run while the other tests use the test
process; the test that checks a job waits for its result (with a generous timeout: a busy machine is slow).

Only the jobs of the tests selected are started (``start_for``, from ``pytest_collection_finish``); a job nobody
started beforehand starts when its result is first asked for. Under pytest-xdist (``-n 2``, the README's command)
nothing is started beforehand: every worker collects every test, and the other worker keeps the second core busy
while a test waits for its job. Jobs still running when the session ends are stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
NOTEBOOKS = REPO / "notebooks"


@dataclass
class Job:
    """One command run in its own folder; its result once done."""

    name: str
    command: list[str]
    env: dict[str, str]
    folder: Path
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    result: subprocess.CompletedProcess[str] | None = None
    error: BaseException | None = None
    process: subprocess.Popen[str] | None = None
    before: dict[str, Any] = field(default_factory=dict)  # what the test compares with afterwards

    def run(self) -> None:
        try:
            with subprocess.Popen(
                self.command, cwd=self.folder, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, start_new_session=True,
            ) as self.process:  # fmt: skip
                try:
                    stdout, stderr = self.process.communicate(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    stdout, stderr = self.process.communicate()
                    stderr += f"\n[background] {self.name} stopped after {self.timeout:.0f} s"
            self.result = subprocess.CompletedProcess(self.command, self.process.returncode, stdout, stderr)
        except BaseException as err:  # handed to the test that waits for this job
            self.error = err
        finally:
            self.done.set()


def job_environment(folder: Path, **extra: str) -> dict[str, str]:
    """The environment the tests give a command (see conftest.isolated): wandb offline, its files in ``folder``."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "WANDB_API_KEY", "MNIST_LIGHTNING_DEBUG")}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    # one thread: a job shares the cores with the test process (its tiny runs are checks, never measurements)
    env["OMP_NUM_THREADS"] = "1"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        (folder / ".wandb" / var.lower()).mkdir(parents=True, exist_ok=True)
        env[var] = str(folder / ".wandb" / var.lower())
    return env | extra


def notebook_job(name: str, root: Path, mnist_dir: Path) -> Job:
    """``notebooks/<name>`` run top to bottom in a fresh kernel with the CI budget (see run_notebook.py)."""
    folder = root / name.removesuffix(".ipynb")
    folder.mkdir(parents=True)
    # (one thread, see job_environment: on a busy 2-core machine two competing threads make the tiny CI-budget
    # steps many times slower)
    env = job_environment(folder, MNIST_LIGHTNING_NOTEBOOK_BUDGET="ci")
    env["MNIST_LIGHTNING_DATA_DIR"] = str(mnist_dir)
    command = [sys.executable, str(TESTS / "run_notebook.py"), str(NOTEBOOKS / name), str(folder / "executed.ipynb")]
    return Job(name, command, env, folder, timeout=1800)


def benchmark_files() -> dict[Path, int]:
    """Every file under benchmarks/ (bytecode aside) and when it was last written: a tiny run must leave them all."""
    folder = REPO / "benchmarks"
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if "__pycache__" not in p.parts}


def script_job(name: str, script: Path, root: Path, mnist_dir: Path, *args: str) -> Job:
    """``python <script> <args>`` (a benchmark script) from an empty folder, without ``--out``: a tiny run then
    writes its tables into a new folder under its temporary folder, which is ``<folder>/tmp`` here."""
    folder = root / name
    (folder / "tmp").mkdir(parents=True)
    env = job_environment(folder, MNIST_LIGHTNING_DATA_DIR=str(mnist_dir), TMPDIR=str(folder / "tmp"))
    job = Job(name, [sys.executable, str(script), *args], env, folder, timeout=1800)
    job.before["benchmark_files"] = benchmark_files()
    return job


class Jobs:
    """The session's background jobs, run one at a time in the order they were started."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mnist-lightning-tests-"))
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self.lock = threading.Lock()
        self.worker: threading.Thread | None = None

    def start(self, name: str, make: Callable[[Path], Job]) -> Job:
        with self.lock:
            if name not in self.jobs:
                job = self.jobs[name] = make(self.root)
                self.queue.append(job)
                if self.worker is None or not self.worker.is_alive():
                    self.worker = threading.Thread(target=self._work, name="background jobs", daemon=True)
                    self.worker.start()
            return self.jobs[name]

    def _work(self) -> None:
        while True:
            with self.lock:
                if not self.queue:
                    self.worker = None
                    return
                job = self.queue.pop(0)
            job.run()

    def wait(self, name: str, make: Callable[[Path], Job]) -> Job:
        """The job ``name`` once done (started now if it was not); its folder holds what it wrote."""
        job = self.start(name, make)
        if not job.done.wait(timeout=job.timeout + 3600):  # a job ends itself at its timeout: this never waits forever
            raise TimeoutError(f"background job {name} never finished")
        if job.error is not None:
            raise job.error
        return job

    def stop(self) -> None:
        with self.lock:
            self.queue.clear()
            running = [job for job in self.jobs.values() if job.process is not None and job.process.poll() is None]
        for job in running:
            os.killpg(job.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        shutil.rmtree(self.root, ignore_errors=True)


JOBS = Jobs()


def start_for(tests: Iterable[tuple[str, str]], mnist_dir: Path) -> None:
    """Start the jobs that the selected tests (file name, test name) will ask for, in the order the tests run."""
    for file, test in tests:
        if file == "test_gpu_benchmark.py" and test.startswith("test_tiny_"):
            JOBS.start("gpu_tiny", lambda root: gpu_tiny_job(root, mnist_dir))
        elif file == "test_notebooks.py" and test.startswith("test_notebook_runs_in_ci_budget["):
            name = test.split("[", 1)[1].removesuffix("]")
            JOBS.start(name, lambda root, name=name: notebook_job(name, root, mnist_dir))
        elif file == "test_speed.py" and test == "test_benchmark_tiny_mode_writes_its_table":
            JOBS.start("speed_tiny", lambda root: speed_tiny_job(root, mnist_dir))


def gpu_tiny_job(root: Path, mnist_dir: Path) -> Job:
    job = script_job("gpu_tiny", REPO / "benchmarks" / "gpu.py", root, mnist_dir, "--tiny")
    job.before["results_mtime"] = (REPO / "benchmarks" / "results.json").stat().st_mtime  # it must not write there
    return job


def speed_tiny_job(root: Path, mnist_dir: Path) -> Job:
    return script_job("speed_tiny", REPO / "benchmarks" / "speed.py", root, mnist_dir, "--tiny")
