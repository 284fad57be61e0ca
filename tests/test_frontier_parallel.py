"""benchmarks/results.py --parallel: seeds side by side, each process with its share of the cores as torch threads;
``--threads`` and ``OMP_NUM_THREADS`` win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import their parts as siblings
import results
import results_parallel

from mnist_lightning import threads


class FakeProcess:
    """A child that runs for two polls; records what it was started with and how many ran beside it."""

    started: list[tuple[list[str], str]] = []
    running = 0
    most = 0
    fail: set[str] = set()

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        FakeProcess.started.append((command, env["OMP_NUM_THREADS"]))
        FakeProcess.running += 1
        FakeProcess.most = max(FakeProcess.most, FakeProcess.running)
        self.polls, self.returncode = 0, None
        self.code = 1 if command[command.index("--seeds") + 1] in FakeProcess.fail else 0

    def poll(self) -> int | None:
        self.polls += 1
        if self.polls >= 2 and self.returncode is None:
            self.returncode = self.code
            FakeProcess.running -= 1
        return self.returncode


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeProcess]:
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    FakeProcess.started, FakeProcess.running, FakeProcess.most, FakeProcess.fail = [], 0, 0, set()
    return FakeProcess


def side_by_side(tmp_path: Path, *options: str) -> list[str]:
    args = results.parse_args(["--presets", "linear", "--results", str(tmp_path / "r.json"), *options])
    jobs = [("linear", seed) for seed in args.seeds]
    return results_parallel.run_side_by_side(jobs, args, start=FakeProcess)


def test_each_of_n_processes_gets_its_share_of_the_cores(fake, tmp_path: Path) -> None:
    assert side_by_side(tmp_path, "--seeds", "1", "2", "3", "--parallel", "2") == []
    assert [share for _, share in fake.started] == ["4", "4", "4"] and fake.most == 2  # 8 cores, 2 at a time
    command = fake.started[0][0]
    assert command[1] == str(REPO / "benchmarks" / "results.py") and "--parallel" not in command
    assert command[command.index("--results") + 1] == str(tmp_path / "r.json")  # one table for all of them
    # more processes than jobs: the share is of the processes that run
    fake.started.clear()
    side_by_side(tmp_path, "--seeds", "1", "2", "--parallel", "4")
    assert [share for _, share in fake.started] == ["4", "4"]


@pytest.mark.parametrize(("option", "environment", "share"), [("3", None, "3"), (None, "2", "2"), ("3", "2", "3")])
def test_a_threads_flag_then_omp_num_threads_win(
    fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str | None, environment: str | None, share: str
) -> None:
    if environment:
        monkeypatch.setenv("OMP_NUM_THREADS", environment)
    side_by_side(tmp_path, "--seeds", "1", "2", "--parallel", "2", *(["--threads", option] if option else []))
    assert [s for _, s in fake.started] == [share, share]


def test_a_failed_seed_is_named_and_the_others_still_run(fake, tmp_path: Path) -> None:
    fake.fail = {"2"}
    assert side_by_side(tmp_path, "--seeds", "1", "2", "3", "--parallel", "2") == ["linear seed 2"]
    assert len(fake.started) == 3


def test_seeds_side_by_side_on_real_mnist_each_with_its_share(tmp_path: Path, mnist_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # no user setting: the share applies
    env |= {"MNIST_LIGHTNING_DATA_DIR": str(mnist_dir), "WANDB_MODE": "offline"}
    out = tmp_path / "r.json"
    command = [sys.executable, str(REPO / "benchmarks" / "results.py"), "--presets", "linear", "--seeds", "1", "2"]
    command += ["--parallel", "2", "--tiny", "--results", str(out)]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    share = threads.thread_share(2)
    assert f"2 fits, 2 at a time, {share} thread(s) each" in done.stdout
    runs = json.loads(out.read_text())["linear"]["runs"]
    assert sorted(runs) == ["1", "2"] and {run["threads"] for run in runs.values()} == {share}
    assert all("not a result" in run["load"] for run in runs.values())
    assert (tmp_path / "r.md").is_file()  # the markdown beside the JSON it was asked for
