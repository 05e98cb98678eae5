"""In-process tiers for the data plane, in the spirit of httpx's ``MockTransport``.

A :class:`FakeNetwork` holds real :class:`~tierflow.node.server.NodeServer` s -- their model,
stage execution, routing along ``meta["route"]``, compute-time reports and typed error replies --
but no sockets: a call hands the request to the node's ``handle`` as an object. There is no TLS,
no framing and no quantization (compare outputs exactly only with compression ``raw``).

The split runner and engine take it as their ``clients`` (``FakeNetwork.peers("device", ...)``),
a node as its ``peers``; it implements :class:`tierflow.transport.peers.Peers` the way
:class:`~tierflow.transport.peers.PeerClients` does, errors included: an unknown peer is "no
route", a dead tier refuses new calls, and calls pending when it dies fail like a reset stream.

The test controls the network with events instead of timing: :meth:`FakeNetwork.hold` keeps
requests at a tier's door (``Door.waiting`` is set when one is there, ``release`` lets them in)
and :meth:`FakeNetwork.kill` makes a tier vanish.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tierflow.context.kv import KVShardStore
from tierflow.errors import TierUnavailableError
from tierflow.node.config import NodeConfig
from tierflow.node.server import NodeServer
from tierflow.transport.messages import PeerInfo, StageRequest, StageResponse
from tierflow.types import Tier

ADDRESS = "in-process"


class Door:
    """Where requests to a held tier wait: ``waiting`` is set once one is there."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self._open = asyncio.Event()

    async def enter(self) -> None:
        self.waiting.set()
        await self._open.wait()

    def release(self) -> None:
        self._open.set()


class FakeNetwork:
    """Tiers in this process; see the module docstring."""

    def __init__(self, certs: Path) -> None:
        self.certs = certs
        self.nodes: dict[str, NodeServer] = {}
        self.dead: set[str] = set()
        self.calls: list[tuple[str, str, str]] = []  # (caller, callee, op) in the order they arrived
        self._doors: dict[str, Door] = {}
        self._pending: dict[str, set[asyncio.Future[None]]] = {}

    def node(
        self,
        tier: Tier,
        model: str | Path,
        reaches: Iterable[str] = (),
        *,
        slowdown: float = 1.0,
        **settings: Any,
    ) -> NodeServer:
        """A real node for ``tier`` serving ``model``, whose next hops (``reaches``) are in this network.

        ``settings`` are further :class:`NodeConfig` fields (an LM entry point's ``store``, ``spans``).
        """
        config = NodeConfig(
            tier=tier, model=str(model), certs=self.certs, threads=1, slowdown=slowdown, **settings
        )
        server = NodeServer(config, peers=self.peers(tier.value, reaches))
        self.nodes[tier.value] = server
        return server

    def peers(self, caller: str, reaches: Iterable[str]) -> FakePeers:
        """What ``caller`` uses to call the tiers it ``reaches`` directly."""
        return FakePeers(self, caller, {name: ADDRESS for name in reaches})

    def hold(self, tier: str) -> Door:
        """From now on, requests to ``tier`` wait at its door until ``release()``."""
        door = self._doors[tier] = Door()
        return door

    def release(self, tier: str) -> None:
        door = self._doors.pop(tier, None)
        if door is not None:
            door.release()

    def kill(self, tier: str) -> None:
        """``tier`` is gone: pending calls to it fail (a reset stream), new ones are refused."""
        self.dead.add(tier)
        for lost in self._pending.pop(tier, set()):
            if not lost.done():
                lost.set_result(None)

    def revive(self, tier: str) -> None:
        """``tier`` answers again (a restarted process: what it held is gone)."""
        self.dead.discard(tier)
        self.release(tier)  # a door held before it died opens: the new process waits for nobody
        hop = self.nodes[tier].lm_hop
        if hop is not None:
            hop.kv = KVShardStore(hop.kv.capacity_bytes)

    async def deliver(
        self, caller: str, peer: str, request: StageRequest, timeout: float | None
    ) -> StageResponse:
        """One call from ``caller`` to ``peer``: its response, or the error a data-plane client raises."""
        if peer in self.dead or peer not in self.nodes:
            raise TierUnavailableError(f"tier '{peer}' at {ADDRESS} is unreachable: refused", tier=peer)
        self.calls.append((caller, peer, request.op))
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(peer, set()).add(lost)
        work = asyncio.ensure_future(self._at(caller, peer, request))
        either: set[asyncio.Future[Any]] = {work, lost}
        try:
            done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return work.result()
            reason = "stream reset" if lost in done else "timed out"
            raise TierUnavailableError(f"tier '{peer}' failed during the request: {reason}", tier=peer)
        finally:
            work.cancel()
            self._pending.get(peer, set()).discard(lost)

    async def _at(self, caller: str, peer: str, request: StageRequest) -> StageResponse:
        door = self._doors.get(peer)
        if door is not None:
            await door.enter()
        # what crosses a wire is a copy: the callee never shares the caller's arrays
        arrived = dataclasses.replace(request, inputs={n: t.copy() for n, t in request.inputs.items()})
        return await self.nodes[peer].handle(arrived, PeerInfo(caller, b"", ADDRESS, 0))


class FakePeers:
    """:class:`tierflow.transport.peers.Peers` over a :class:`FakeNetwork`."""

    def __init__(self, network: FakeNetwork, caller: str, addresses: Mapping[str, str]) -> None:
        self.network = network
        self.caller = caller
        self.addresses = dict(addresses)

    async def call(self, peer: str, request: StageRequest, timeout: float | None = None) -> StageResponse:
        if peer not in self.addresses:
            known = ", ".join(self.addresses) or "none"
            raise TierUnavailableError(f"no route to tier '{peer}' (known peers: {known})", tier=peer)
        response = await self.network.deliver(self.caller, peer, request, timeout)
        return response.raise_for_error(peer)

    async def close(self) -> None:
        return None
