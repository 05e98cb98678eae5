"""A local three-tier deployment: edge and cloud node processes behind emulated links.

The device is the caller's own process (``tierflow.load`` with the cloud proxy, or a split run);
it reaches the edge through the access link at the chosen profile and the cloud through the same
access link chained with the backhaul. Every link is SIMULATED by the user-space emulator.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from tierflow.node.launch import NodeProcess, start_node
from tierflow.transport.certs import init_pki
from tierflow.transport.linkemu import LinkEmulator
from tierflow.types.links import LinkProfile, get_profile

BACKHAUL = "datacenter"  # edge <-> cloud


@dataclass
class LocalDeployment:
    """Edge and cloud nodes plus the links between the tiers; ``stop()`` ends them all."""

    certs: Path
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    links: dict[str, LinkEmulator] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        return {
            "certs": str(self.certs),
            "nodes": {
                n: {"data_plane": p.data_plane, "http": p.http, "model_id": p.model_id}
                for n, p in self.nodes.items()
            },
            "device_links": {n: link.hostport for n, link in self.links.items() if n.startswith("device->")},
            "profile": self.links["device->edge"].profile.name if "device->edge" in self.links else None,
        }

    def set_profile(self, profile: LinkProfile | str) -> None:
        """Change the device's access link live (both device links)."""
        for name in ("device->edge", "device->cloud"):
            self.links[name].set_profile(profile)

    def stop(self) -> None:
        for link in self.links.values():
            with contextlib.suppress(Exception):
                link.stop()
        for node in self.nodes.values():
            node.stop()


def deploy_local(
    model: str | Path,
    certs: Path,
    profile: str = "4g",
    *,
    threads: int = 1,
    edge_slowdown: float = 1.0,
    log_dir: Path | None = None,
) -> LocalDeployment:
    """Start cloud and edge nodes serving ``model`` and the emulated links between the tiers.

    ``certs`` is created with a CA and device/edge/cloud certificates when it does not exist.
    """
    access = get_profile(profile)  # a bad name fails before anything starts
    if not (certs / "ca.crt").exists():
        init_pki(certs, ["device", "edge", "cloud"])
    deployment = LocalDeployment(certs)
    log = (lambda tier: log_dir / f"{tier}.log") if log_dir else (lambda tier: None)
    try:
        cloud = start_node("cloud", model, certs, threads=threads, log=log("cloud"))
        deployment.nodes["cloud"] = cloud
        backhaul = LinkEmulator(cloud.data_plane, BACKHAUL).start()
        deployment.links["edge->cloud"] = backhaul
        edge = start_node(
            "edge",
            model,
            certs,
            peers={"cloud": backhaul.hostport},
            threads=threads,
            slowdown=edge_slowdown,
            log=log("edge"),
        )
        deployment.nodes["edge"] = edge
        deployment.links["device->edge"] = LinkEmulator(edge.data_plane, access).start()
        deployment.links["device->cloud"] = LinkEmulator(backhaul.hostport, access).start()
    except BaseException:
        deployment.stop()
        raise
    return deployment
