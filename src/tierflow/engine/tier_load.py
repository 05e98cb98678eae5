"""Each tier's current load, for the task-resource matrix (router/matrix.py): the share of the tier's
compute that is taken, 0..1, which the matrix turns into slower predictions (``mean / (1 - load)``).

A node measures its own: the CPU its process used since it was last asked, over the threads it may
use (:class:`ProcessLoad`; ``load`` in its ``info`` reply). The entry point asks the edge and the
cloud every :data:`LOAD_EVERY_S` and reads the device's locally (:func:`watch_loads`).
"""

from __future__ import annotations

import asyncio
import contextlib

import psutil

from tierflow.engine.images import OP_INFO
from tierflow.errors import TierflowError
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.transport.messages import StageRequest
from tierflow.transport.peers import Peers
from tierflow.types import Tier

LOAD_KEY = "load"  # the node's info reply: its load, 0..1
LOAD_EVERY_S = 2.0  # how often the entry point asks
LOAD_TIMEOUT_S = 1.0  # a tier that does not answer within this keeps its last load


class ProcessLoad:
    """This process's CPU use since the last call, over ``threads`` cores (capped at 1)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(int(threads), 1)
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only sets the baseline

    def __call__(self) -> float:
        used = float(self._process.cpu_percent(None)) / 100.0
        return min(max(used / self.threads, 0.0), 1.0)


async def poll_loads(peers: Peers | None, local: ProcessLoad | None, matrix: TaskResourceMatrix) -> None:
    """One round: the device's load from ``local``, the edge's and the cloud's from their info."""
    if local is not None:
        matrix.set_load(Tier.DEVICE, local())
    if peers is None:
        return
    for tier in (Tier.EDGE, Tier.CLOUD):
        if tier.value not in peers.addresses:
            continue
        with contextlib.suppress(TierflowError, TimeoutError, ValueError, KeyError):
            reply = await peers.call(tier.value, StageRequest(OP_INFO), LOAD_TIMEOUT_S)
            matrix.set_load(tier, float(reply.meta[LOAD_KEY]))  # a tier down keeps its last load


async def watch_loads(
    peers: Peers | None, local: ProcessLoad | None, matrix: TaskResourceMatrix, every_s: float = LOAD_EVERY_S
) -> None:
    """:func:`poll_loads` every ``every_s`` seconds, until cancelled."""
    while True:
        await poll_loads(peers, local, matrix)
        await asyncio.sleep(every_s)
