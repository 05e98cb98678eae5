"""Each tier's current load for the task-resource matrix (router/matrix.py): the work of *other* callers.

A node counts its compute requests by **origin**, the entry point that sent them, in a
:class:`WorkMeter` (a forwarded LM step or split stage keeps its sender's origin, so the cloud does not
take the device's request for the edge's). It answers :data:`OP_LOAD` with each origin's mean
concurrency over the last :data:`LOAD_WINDOW_S`. An entry point (:class:`TierLoads`) turns that into
the matrix's load, 0..1:

- edge and cloud: ``c`` = the mean number of requests of origins other than its own in flight there,
  read every :data:`LOAD_EVERY_S`;
- the device: ``c`` = the compute running on the device right now (its API's other requests), live.

``load = c / (1 + c)``: a request that shares a node's cores with ``c`` others runs about ``1 + c``
times slower, and the matrix predicts ``mean / (1 - load) = mean * (1 + c)``.

The entry point's own finished work is never load. A node's CPU use over the last seconds was tried
first and taken back: it counted the entry point's previous request as other work, and the next
predictions were up to 10x slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from tierflow.errors import TierflowError
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.transport.messages import ORIGIN_KEY, MetaValue, StageRequest, StageResponse
from tierflow.transport.peers import Peers
from tierflow.types import Tier

OP_LOAD = "load"  # data plane: a node's work by origin, {origin: mean concurrency} in WORK_KEY
WORK_KEY = "work"
LOAD_WINDOW_S = 2.0  # the window a node's report averages over
LOAD_EVERY_S = 2.0  # how often an entry point asks the edge and the cloud
LOAD_TIMEOUT_S = 1.0  # a tier that does not answer within this keeps its last load


def load_share(concurrency: float) -> float:
    """The matrix's load (0..1) of a tier where ``concurrency`` other requests run beside ours."""
    c = max(float(concurrency), 0.0)
    return c / (1.0 + c)


class WorkMeter:
    """A node's compute requests by origin: how many run now, and each origin's mean concurrency over
    the last ``window_s`` (thread-safe: compute runs in worker threads as well as on the loop)."""

    def __init__(
        self, own: str = "", window_s: float = LOAD_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.own = own  # the node's own origin: what its local compute counts as
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._running: dict[int, tuple[str, float]] = {}  # id -> (origin, started)
        self._done: deque[tuple[str, float, float]] = deque()  # (origin, started, ended), oldest first
        self.listeners: list[Callable[[int], None]] = []  # told how many run, after each start and end

    @contextlib.contextmanager
    def busy(self, origin: str | None = None) -> Iterator[None]:
        """Count the enclosed compute as ``origin``'s (None: the node's own)."""
        origin = self.own if origin is None else origin
        with self._lock:
            key = next(self._ids)
            self._running[key] = (origin, self._clock())
            running = len(self._running)
        self._tell(running)
        try:
            yield
        finally:
            with self._lock:
                who, started = self._running.pop(key)
                self._done.append((who, started, self._clock()))
                running = len(self._running)
            self._tell(running)

    def _tell(self, running: int) -> None:
        for listener in self.listeners:
            listener(running)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._running)

    def concurrency(self) -> dict[str, float]:
        """Each origin's requests in flight, averaged over the last window (finished ones included)."""
        now = self._clock()
        since = now - self.window_s
        out: dict[str, float] = {}
        with self._lock:
            while self._done and self._done[0][2] <= since:
                self._done.popleft()
            spans = [*self._done, *((o, s, now) for o, s in self._running.values())]
        for origin, started, ended in spans:
            overlap = min(ended, now) - max(started, since)
            if overlap > 0:
                out[origin] = out.get(origin, 0.0) + overlap / self.window_s
        return out

    def report(self) -> dict[str, MetaValue]:
        """The reply to :data:`OP_LOAD`."""
        return {WORK_KEY: json.dumps(self.concurrency())}


def others(report: Mapping[str, MetaValue], origin: str) -> float:
    """The concurrency of every origin but ``origin`` in a node's :data:`OP_LOAD` reply."""
    work = json.loads(str(report[WORK_KEY]))
    return sum(float(c) for who, c in work.items() if who != origin)


class OriginPeers:
    """A node's :class:`Peers`, stamping its origin on every request that carries none yet."""

    def __init__(self, peers: Peers, origin: str) -> None:
        self.peers = peers
        self.origin = origin

    @property
    def addresses(self) -> Mapping[str, str]:
        return self.peers.addresses

    async def call(self, peer: str, request: StageRequest, timeout: float | None = None) -> StageResponse:
        request.meta.setdefault(ORIGIN_KEY, self.origin)
        return await self.peers.call(peer, request, timeout)

    async def close(self) -> None:
        await self.peers.close()


class TierLoads:
    """An entry point's view of each tier's load, kept in its task-resource matrix (module docstring)."""

    def __init__(
        self, matrix: TaskResourceMatrix, meter: WorkMeter, peers: Peers | None, origin: str
    ) -> None:
        self.matrix = matrix
        self.peers = peers
        self.origin = origin
        meter.listeners.append(self._device)

    def _device(self, running: int) -> None:
        self.matrix.set_load(Tier.DEVICE, load_share(running))

    async def poll(self) -> None:
        """Ask the edge and the cloud once; a tier that does not answer keeps its last load."""
        if self.peers is None:
            return
        for tier in (Tier.EDGE, Tier.CLOUD):
            if tier.value not in self.peers.addresses:
                continue
            with contextlib.suppress(TierflowError, TimeoutError, ValueError, KeyError):
                reply = await self.peers.call(tier.value, StageRequest(OP_LOAD), LOAD_TIMEOUT_S)
                self.matrix.set_load(tier, load_share(others(reply.meta, self.origin)))

    async def watch(self, every_s: float = LOAD_EVERY_S) -> None:
        """:meth:`poll` every ``every_s`` seconds, until cancelled."""
        while True:
            await self.poll()
            await asyncio.sleep(every_s)
