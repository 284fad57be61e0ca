"""gpu.py's seconds: one overall budget, a cap per part, and a hard stop for a run that overruns.

A :class:`Budget` hands out :class:`Part` s; a part gets its cap or what is left of the total, whichever is less.
:func:`hard_cap` interrupts whatever runs once a part's seconds are spent, and :func:`run_while_time_allows` runs
seeds one after another while the next one is still expected to fit.
"""

from __future__ import annotations

import contextlib
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


class OverCap(Exception):
    """A part (or one run inside it) reached its time cap."""


@dataclass
class Part:
    """One part of the script: its cap, the seconds it may actually use, and what happened."""

    name: str
    cap_s: float
    allowance_s: float
    clock: Callable[[], float] = field(repr=False)
    started: float = 0.0
    spent_s: float | None = None
    status: str = "not run"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        """Seconds this part may still use."""
        return self.allowance_s - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        """Whether something expected to take ``estimate_s`` seconds ends inside this part's allowance."""
        return estimate_s <= self.left()

    def __enter__(self) -> Part:
        self.status = "running"
        print(f"[gpu] {self.name}: up to {self.allowance_s:.0f} s (cap {self.cap_s:.0f} s)", flush=True)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        self.spent_s = self.elapsed()
        if error is None:
            self.status = "done"
        elif isinstance(error, OverCap):
            self.status = f"stopped at its cap: {error}"
        elif isinstance(error, Exception):  # one broken part must not cost the others their one device run
            self.status = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            self.notes.append("".join(traceback.format_exception(kind, error, tb))[-3000:])
        else:
            return False
        print(f"[gpu] {self.name}: {self.status} after {self.spent_s:.1f} s", flush=True)
        return isinstance(error, Exception)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("clock", "started")}


class Budget:
    """The script's seconds: a part gets its cap or what is left of the total, whichever is less."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s, self.clock = total_s, clock
        self.started = clock()
        self.parts: list[Part] = []

    def left(self) -> float:
        return self.total_s - (self.clock() - self.started)

    def part(self, name: str, cap_s: float | None = None) -> Part:
        """A new part; ``cap_s`` None: everything that is left."""
        left = max(0.0, self.left())
        cap = left if cap_s is None else cap_s
        part = Part(name, cap, min(cap, left), self.clock)
        self.parts.append(part)
        return part


@contextlib.contextmanager
def hard_cap(seconds: float) -> Iterator[None]:
    """Raise :class:`OverCap` in the main thread once ``seconds`` have passed (SIGALRM), wherever the code is then.

    Lightning lets an exception from a ``fit`` or ``test`` through after its teardown, so a training that overruns
    stops cleanly instead of taking the rest of the script's time.
    """
    if seconds <= 0:
        raise OverCap("no time left")

    def ring(signum: int, frame: Any) -> None:
        raise OverCap(f"{seconds:.0f} s passed")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_while_time_allows(
    part: Part, items: list[Any], run_one: Callable[[Any], Any], margin: float = 1.2
) -> tuple[list[Any], str]:
    """``run_one`` on each item while the slowest run so far, times ``margin``, still fits in ``part``.

    Returns the results and a note on why it stopped early ('' when every item ran); a run that still overruns
    is stopped by :func:`hard_cap` and left out.
    """
    done: list[Any] = []
    slowest = 0.0
    for item in items:
        if done and not part.fits(slowest * margin):
            return done, f"stopped after {len(done)} of {len(items)}: the next would pass the {part.cap_s:.0f} s cap"
        start = part.clock()
        try:
            with hard_cap(part.left()):
                done.append(run_one(item))
        except OverCap:
            return done, f"stopped after {len(done)} of {len(items)}: run {len(done) + 1} reached the cap"
        slowest = max(slowest, part.clock() - start)
    return done, ""
