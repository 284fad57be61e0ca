"""CPU threads for training processes that share one machine's cores.

torch gives every process one thread per core. When several training processes run at once on the same cores
(tune workers, benchmark seeds side by side, CPU DDP ranks), their threads oversubscribe the cores and spin waiting
on each other: on a 2-core machine, four 3-epoch MLP fits at once took 205 s with default threads, 2.6 times worse
than a fair share of one process's speed, and two took 41.5 s against 15.8 s with one thread each (2026-12-06).
So whatever starts N such processes gives each ``cores // N`` threads, unless the user said otherwise.

A user's own setting always wins: an explicit count (a command's flag) first, then ``OMP_NUM_THREADS`` in the
environment, which torch itself reads at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

THREADS_ENV = "OMP_NUM_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one, else the CPU count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_share(processes: int) -> int:
    """Threads for each of ``processes`` processes sharing the available cores: their fair share, at least one."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    return max(1, available_cores() // processes)


def user_thread_setting(env: Mapping[str, str] | None = None) -> int | None:
    """The thread count the user set through ``OMP_NUM_THREADS`` in ``env`` (this process's environment by
    default), or None when unset or not a positive integer."""
    value = (os.environ if env is None else env).get(THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def share_threads(processes: int, explicit: int | None = None) -> int:
    """Give this process its share of the cores as torch threads and return the count it now uses.

    ``explicit`` (a user's flag) wins, then ``OMP_NUM_THREADS``; otherwise this process takes
    :func:`thread_share`. The count is also written to ``OMP_NUM_THREADS`` so that the processes this one starts
    inherit it rather than each taking every core again.
    """
    import torch

    threads = explicit or user_thread_setting() or thread_share(processes)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    os.environ[THREADS_ENV] = str(threads)
    return threads


def child_environment(
    processes: int, explicit: int | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment for one of ``processes`` child processes started at once: each gets its share of the cores.

    The same order of precedence as :func:`share_threads`: ``explicit``, then the ``OMP_NUM_THREADS`` the user
    set in ``base`` (this process's environment by default), then the fair share.
    """
    env = dict(os.environ if base is None else base)
    threads = explicit or user_thread_setting(env) or thread_share(processes)
    env[THREADS_ENV] = str(threads)
    return env
