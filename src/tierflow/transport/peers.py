"""Connections from one tier to the next ones, opened on first use and reopened after a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from tierflow.errors import TierUnavailableError, TransportError
from tierflow.transport.dataplane import DataPlaneClient
from tierflow.transport.dataplane_metrics import DataPlaneMetrics
from tierflow.transport.messages import StageRequest, StageResponse
from tierflow.transport.tls import Identity


class Peers(Protocol):
    """How a tier reaches its next tiers: :class:`PeerClients` over the data plane, or a fake.

    A split runner (the device) and a node take one (default: :class:`PeerClients`), so tests
    can run the real routing code against in-process tiers (``tests/support/fake_peers.py``).
    """

    @property
    def addresses(self) -> Mapping[str, str]:
        """The peer tiers this one reaches directly, by name."""
        ...

    async def call(self, peer: str, request: StageRequest, timeout: float | None = None) -> StageResponse:
        """Send ``request`` to ``peer``; a lost peer or an error reply raises a tierflow error."""
        ...

    async def close(self) -> None: ...


class PeerClients:
    """One persistent data-plane session per peer tier (async)."""

    def __init__(
        self, identity: Identity, peers: dict[str, str], metrics: DataPlaneMetrics | None = None
    ) -> None:
        self.identity = identity
        self.addresses = dict(peers)
        self.metrics = metrics
        self._clients: dict[str, DataPlaneClient] = {}
        self._lock = asyncio.Lock()

    async def client(self, peer: str) -> DataPlaneClient:
        if peer not in self.addresses:
            known = ", ".join(self.addresses) or "none"
            raise TierUnavailableError(f"no route to tier '{peer}' (known peers: {known})", tier=peer)
        async with self._lock:
            client = self._clients.get(peer)
            if client is None or not client.connected:
                if client is not None:
                    await client.close()
                client = DataPlaneClient(
                    self.addresses[peer], self.identity, server_name=peer, metrics=self.metrics
                )
                try:
                    await client.connect()
                except TransportError as exc:
                    raise TierUnavailableError(
                        f"tier '{peer}' at {self.addresses[peer]} is unreachable: {exc}", tier=peer
                    ) from exc
                self._clients[peer] = client
            return client

    async def call(self, peer: str, request: StageRequest, timeout: float | None = None) -> StageResponse:
        """Send ``request`` to ``peer``; a lost peer or an error reply raises a tierflow error."""
        client = await self.client(peer)
        try:
            response = await client.call(request, timeout)
        except TransportError as exc:
            raise TierUnavailableError(f"tier '{peer}' failed during the request: {exc}", tier=peer) from exc
        return response.raise_for_error(peer)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

