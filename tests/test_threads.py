"""The thread share of processes that train side by side (mnist_lightning.threads)."""

from __future__ import annotations

import torch

from mnist_lightning import threads


def test_share_divides_the_cores_and_never_drops_below_one(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    assert [threads.thread_share(n) for n in (1, 2, 3, 4, 8, 16)] == [8, 4, 2, 2, 1, 1]


def test_a_users_setting_wins_over_the_share(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert threads.share_threads(4) == 3 and torch.get_num_threads() == 3
        assert threads.share_threads(4, explicit=5) == 5 and torch.get_num_threads() == 5
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.share_threads(4) == 2 and torch.get_num_threads() == 2
        # the children this process starts inherit the count
        assert threads.os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)


def test_child_environment_gives_each_child_its_share(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    assert threads.child_environment(2, base={})["OMP_NUM_THREADS"] == "2"
    assert threads.child_environment(2, base={"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"
    assert threads.child_environment(2, explicit=1, base={"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "1"
    assert threads.child_environment(8, base={"OMP_NUM_THREADS": "junk"})["OMP_NUM_THREADS"] == "1"
