"""Prometheus metrics of the data plane.

One :class:`DataPlaneMetrics` per registry (prometheus refuses a metric name
twice in one registry). Servers and clients default to the process-wide
:func:`default_metrics`; a node serves ``default_metrics().registry`` on its
``/metrics`` endpoint, or passes its own ``DataPlaneMetrics(registry)`` to both.
``peer`` labels are node names from certificates, so their number stays small.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

# Round trips on loopback take ~0.1-1 ms, across a WAN link 10 ms-1 s.
_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class DataPlaneMetrics:
    """Counters and histograms of one process's data plane, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.bytes_sent = Counter(
            "tierflow_dataplane_bytes_sent",
            "Bytes of data-plane messages sent, per peer node.",
            ["peer"],
            registry=self.registry,
        )
        self.bytes_received = Counter(
            "tierflow_dataplane_bytes_received",
            "Bytes of data-plane messages received, per peer node.",
            ["peer"],
            registry=self.registry,
        )
        self.requests = Counter(
            "tierflow_dataplane_requests",
            "Stage requests, by side (server: served, client: sent) and outcome (ok or an error code).",
            ["side", "peer", "outcome"],
            registry=self.registry,
        )
        self.frames_rejected = Counter(
            "tierflow_dataplane_frames_rejected",
            "Incoming frames or messages rejected, by reason (tampered, replayed, truncated, shape, ...).",
            ["side", "reason"],
            registry=self.registry,
        )
        self.handshakes = Counter(
            "tierflow_dataplane_handshakes",
            "Session handshakes on data-plane streams, by side and outcome.",
            ["side", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tierflow_dataplane_request_seconds",
            "Stage request latency: server from receipt to reply, client the full round trip.",
            ["side"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def for_peer(self, side: str, peer: str) -> PeerMetrics:
        """The children for one side and peer, resolved once (``labels()`` is too slow per message)."""
        return PeerMetrics(self, side, peer)

    def rejected(self, side: str, reason: str) -> None:
        self.frames_rejected.labels(side=side, reason=reason).inc()

    def rejected_count(self, side: str, reason: str) -> float:
        """The current count for one reason (for tests and status pages)."""
        value = self.registry.get_sample_value(
            "tierflow_dataplane_frames_rejected_total", {"side": side, "reason": reason}
        )
        return value or 0.0


class PeerMetrics:
    """One stream's view of :class:`DataPlaneMetrics`: the label lookups done up front."""

    def __init__(self, metrics: DataPlaneMetrics, side: str, peer: str) -> None:
        self._metrics, self._side, self._peer = metrics, side, peer
        self.sent = metrics.bytes_sent.labels(peer=peer)
        self.received = metrics.bytes_received.labels(peer=peer)
        self.latency = metrics.latency.labels(side=side)
        self._outcomes: dict[str, Any] = {}

    def request(self, outcome: str, seconds: float | None = None) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._metrics.requests.labels(side=self._side, peer=self._peer, outcome=outcome)
            self._outcomes[outcome] = child
        child.inc()
        if seconds is not None:
            self.latency.observe(seconds)

    def rejected(self, reason: str) -> None:
        self._metrics.rejected(self._side, reason)


_default: DataPlaneMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> DataPlaneMetrics:
    """The process-wide data-plane metrics, created on first use on their own registry."""
    global _default
    with _default_lock:
        if _default is None:
            _default = DataPlaneMetrics()
        return _default
