"""CPU DDP ranks share the machine's cores: each rank trains with its share of torch threads, unless the user set
``OMP_NUM_THREADS``, whether Lightning started the ranks (``configs/ddp.yaml``) or another launcher did.

The suite sets ``OMP_NUM_THREADS=1`` for every process it starts (conftest.py), so each test sets or removes it
explicitly: a rank that inherited the suite's 1 would prove nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CONFIGS, start_console_script
from digit_helpers import python_path
from test_ddp import free_port

from mnist_lightning.threads import thread_share

TIMEOUT = 300  # seconds; a stuck rank must fail the test, never hang it
# two ranks, a few steps each: the thread count is recorded when training starts
FIT = ("fit", "--config", str(CONFIGS / "mlp_128_64.yaml"), "--config", str(CONFIGS / "ddp.yaml"))
FIT += ("--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1")
FIT += ("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.logger", "false")
FIT += ("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")
FIT += ("--trainer.callbacks+=cpu_thread_recorder.ThreadRecorder", "--trainer.callbacks.folder", "threads")


def rank_environment(omp_num_threads: str | None, **ranks: str) -> dict[str, str]:
    """The suite's environment with tests/ importable, ``OMP_NUM_THREADS`` as given (None: unset) and ``ranks``."""
    env = {key: value for key, value in os.environ.items() if key not in ("WANDB_SERVICE", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = python_path()
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    return env | ranks


def wait_all(processes: list[subprocess.Popen[str]]) -> None:
    """Wait for every process; fail with the stderr of any that failed (all are ended if one hangs)."""
    try:
        outputs = [process.communicate(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.communicate()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, f"a rank exited {process.returncode}:\n{stderr[-3000:]}"


def recorded_threads(folder: Path) -> dict[str, int]:
    return {path.stem: json.loads(path.read_text())["threads"] for path in sorted(folder.glob("rank*.json"))}


def test_ranks_lightning_starts_each_take_their_share_of_the_cores(isolated: Path) -> None:
    # the configs/ddp.yaml path: Lightning starts the second rank by running the first one's command again
    wait_all([start_console_script(*FIT, env=rank_environment(None, MASTER_PORT=free_port()))])
    assert recorded_threads(isolated / "threads") == {"rank0": thread_share(2), "rank1": thread_share(2)}


# slow: the same share as the ranks Lightning starts (the fast test above), for ranks a launcher such as SLURM started
@pytest.mark.slow
def test_ranks_another_launcher_starts_each_take_their_share_of_the_cores(isolated: Path) -> None:
    # as SLURM, mpirun or a script of the user's start ranks: every process is told its rank by the environment, and
    # Lightning's own launcher (which would give each its share) does not run
    port = free_port()
    processes = [
        start_console_script(
            *FIT,
            env=rank_environment(
                None, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK="0", LOCAL_RANK=str(rank), WORLD_SIZE="2"
            ),
        )
        for rank in range(2)
    ]
    wait_all(processes)
    assert recorded_threads(isolated / "threads") == {"rank0": thread_share(2), "rank1": thread_share(2)}


def test_the_users_omp_num_threads_wins_over_the_share(isolated: Path) -> None:
    env = rank_environment("3", MASTER_PORT=free_port())
    wait_all([start_console_script(*FIT, env=env)])
    assert recorded_threads(isolated / "threads") == {"rank0": 3, "rank1": 3}
