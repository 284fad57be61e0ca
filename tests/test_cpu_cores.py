"""benchmarks/cores.py's groups: what environment each process of a group gets, and how a group's figures are read
(the measurement itself starts several fits and is not run here)."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import their parts as siblings
import cores

from mnist_lightning.threads import thread_share


def test_default_groups_leave_torch_its_default_and_shared_groups_give_each_its_share(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the suite's or a user's own setting must not leak into a group
    assert "OMP_NUM_THREADS" not in cores.group_environment(4, shared=False)
    assert cores.group_environment(4, shared=True)["OMP_NUM_THREADS"] == str(thread_share(4))
    assert cores.group_environment(1, shared=True)["OMP_NUM_THREADS"] == str(thread_share(1))


def test_efficiency_compares_a_group_with_one_process_alone() -> None:
    def run(processes: int, threads: str, wall: float) -> dict:
        return {
            "processes": processes,
            "threads": threads,
            "group_wall_s": wall,
            "train_s": [wall - 1] * processes,
            "load_before": 1.0,
        }

    runs = [run(1, "default", 10.0), run(1, "default", 12.0), run(2, "default", 40.0), run(2, "1", 25.0)]
    rows = {(r["processes"], r["threads"]): r for r in cores.summarize(runs)}
    assert rows[(1, "default")]["efficiency"] == pytest.approx(1.0)
    assert rows[(2, "default")]["efficiency"] == pytest.approx(2 * 11 / 40)  # the median of the lone runs: 11 s
    assert rows[(2, "1")]["efficiency"] == pytest.approx(2 * 11 / 25)
    assert "| 2 | 1 (its share) | 25.0 |" in cores.markdown(
        {
            "environment": {"date": "d", "device": "cpu", "torch": "t", "lightning": "l"},
            "cores": 2,
            "command": "c",
            "epochs": 1,
            "repeats": 1,
            "rows": list(rows.values()),
        }
    )
