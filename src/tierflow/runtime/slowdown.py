"""SIMULATED weaker hardware: work stretched to a factor of its length, on the real code path.

A tier started with ``--slowdown K`` sleeps after each piece of work so that it takes K times as
long; whoever measures the tier (the planner, a bench) sees the slower speed without being told K.

What is stretched is the work's *typical* length, not the length of this one run: the median of
the last few runs of the same kind of work, or this run if it was shorter. A burst of load on the
shared host (a page fault, the other process on the core) makes one run longer once; stretching
that run K times would turn a 5 ms hiccup into half a second on a x100 device, which no real slow
device does. The burst itself still shows, once, as it would on real hardware.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Hashable

HISTORY = 9  # runs of one kind the typical length is the median of


class SimulatedSlowdown:
    """Stretches work of each kind (any hashable key: a stage, a span and step size) ``factor``-fold."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor
        self._recent: dict[Hashable, deque[float]] = {}
        self._lock = threading.Lock()  # stages run in worker threads

    def typical(self, kind: Hashable, elapsed: float) -> float:
        """The length to stretch: ``elapsed`` or, if shorter, the median of the recent runs of ``kind``."""
        with self._lock:
            recent = self._recent.setdefault(kind, deque(maxlen=HISTORY))
            recent.append(elapsed)
            return min(elapsed, statistics.median(recent))

    def stretch(self, kind: Hashable, started: float) -> float:
        """Sleep so that the work that began at ``started`` (``time.perf_counter``) looks ``factor`` times
        its typical length. Returns the stretched duration."""
        elapsed = time.perf_counter() - started
        if self.factor > 1.0:
            time.sleep(self.typical(kind, elapsed) * (self.factor - 1.0))
        return time.perf_counter() - started
