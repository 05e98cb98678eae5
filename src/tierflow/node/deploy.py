"""A local three-tier deployment: edge and cloud node processes behind emulated links.

The device is the caller's own process (``tierflow.load`` with the cloud proxy, a split run, or
``tierflow bench split``); it reaches the edge through the access link at the chosen profile and
the cloud through the same access profile followed by the backhaul that carries the edge's traffic
to the cloud (:data:`tierflow.types.links.BACKHAUL` unless told otherwise)::

    device --access--> edge --backhaul--> cloud
    device --access--------> backhaul --> cloud     (device->cloud: the two links one after the other)

so a request from the device to the cloud meets ``chain(access, backhaul)`` -- the links
:func:`tierflow.planner.snapshot.links_for` gives the planner. Every link is SIMULATED by the
user-space emulator; the nodes' ``slowdown`` SIMULATES weaker hardware.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierflow.errors import ConfigError, InvalidInputError
from tierflow.model.registry import kind_of
from tierflow.node.config import not_an_image_generator
from tierflow.node.launch import NodeProcess, start_node
from tierflow.transport.certs import init_pki
from tierflow.transport.linkemu import LinkEmulator
from tierflow.types import ModelKind, Tier
from tierflow.types.links import BACKHAUL, LinkProfile, chain, get_profile

DEVICE_EDGE = "device->edge"
DEVICE_CLOUD = "device->cloud"
EDGE_CLOUD = "edge->cloud"
# the links by the names users give them (``tierflow link set edge-cloud 3g``, the dashboard)
LINK_NAMES = {"device-edge": DEVICE_EDGE, "device-cloud": DEVICE_CLOUD, "edge-cloud": EDGE_CLOUD}
SWITCHABLE_TIERS = (Tier.EDGE, Tier.CLOUD)  # the device node is the entry point: it stays up


@dataclass(frozen=True)
class EntrySettings:
    """The device node that serves the public API (the deployment's entry point) and how it plans."""

    store: str  # a SQLite file or a redis:// url: contexts and API keys
    http: str = "127.0.0.1:8700"
    spans: str | None = None  # fixed layer spans, "device=0-1,edge=2-4,cloud=5-6"; None: planned
    memory_mib: Mapping[Tier, float] = field(default_factory=dict)  # SIMULATED budgets per tier
    kv_mib: float = 256.0
    expires_in: float = 3600.0
    device_slowdown: float = 1.0
    routing: str | None = None  # routing config YAML (docs/ROUTING.md); None: the defaults
    deployment_url: str | None = None  # the deployment's control (node/deployment_control.py)
    lite_model: str | None = None  # the device's early-exit LM (engine/early_exit.py)

    def node_args(self, tier: Tier) -> list[str]:
        """The ``tierflow node`` options these settings give ``tier``'s process."""
        args = ["--kv-mib", str(self.kv_mib)]
        if tier in self.memory_mib:
            args += ["--memory", str(self.memory_mib[tier])]
        if tier is Tier.DEVICE:
            args += ["--store", self.store, "--http", self.http, "--expires-in", str(self.expires_in)]
            args += ["--spans", self.spans] if self.spans else []
            args += ["--routing", self.routing] if self.routing else []
            args += ["--deployment-url", self.deployment_url] if self.deployment_url else []
            args += ["--lite-model", self.lite_model] if self.lite_model else []
        return args


@dataclass
class LocalDeployment:
    """Edge and cloud nodes plus the links between the tiers; ``stop()`` ends them all."""

    certs: Path
    backhaul: LinkProfile | None = BACKHAUL  # None: no emulated links (plain loopback)
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    links: dict[str, LinkEmulator] = field(default_factory=dict)
    # where each hop's sender connects: a link emulator's listening end, or the node itself when the
    # deployment runs with no emulated links (plain loopback)
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> str | None:
        """The entry point's base URL, when the deployment has one."""
        device = self.nodes.get(Tier.DEVICE)
        return f"http://{device.http}" if device is not None else None

    def describe(self) -> dict[str, object]:
        return {
            "api": self.api,
            "certs": str(self.certs),
            "nodes": {
                n: {
                    "data_plane": p.data_plane,
                    "http": p.http,
                    "model_id": p.model_id,
                    "image_model_id": p.image_model_id,
                    "pid": p.process.pid,
                }
                for n, p in self.nodes.items()
            },
            "device_links": {n: a for n, a in self.addresses.items() if n.startswith("device->")},
            "profile": self.links[DEVICE_EDGE].profile.name if DEVICE_EDGE in self.links else None,
            "backhaul": self.backhaul.describe() if self.backhaul else None,
        }

    @property
    def peers(self) -> dict[str, str]:
        """Where the device reaches each remote tier (the device end of its links)."""
        return {
            Tier.EDGE.value: self.addresses[DEVICE_EDGE],
            Tier.CLOUD.value: self.addresses[DEVICE_CLOUD],
        }

    @property
    def access(self) -> LinkProfile:
        """The device's access link in force."""
        return self.links[DEVICE_EDGE].profile

    def hop_profile(self, a: str, b: str) -> LinkProfile:
        """The link a request meets between tiers ``a`` and ``b`` (either order)."""
        pair = {a, b}
        if self.backhaul is None:
            raise ConfigError("this deployment runs over plain loopback: it emulates no links")
        if pair == {Tier.DEVICE, Tier.EDGE}:
            return self.access
        if pair == {Tier.EDGE, Tier.CLOUD}:
            return self.backhaul
        if pair == {Tier.DEVICE, Tier.CLOUD}:
            return chain(self.access, self.backhaul)
        raise ValueError(f"no link between {a} and {b}")

    def set_profile(self, profile: LinkProfile | str) -> None:
        """Change the device's access link live (both device links)."""
        for name in (DEVICE_EDGE, DEVICE_CLOUD):
            self.links[name].set_profile(profile)

    def set_link(self, name: str, profile: LinkProfile | str) -> LinkProfile:
        """Change one link live by its name: ``device-edge``, ``device-cloud`` or ``edge-cloud``."""
        key = LINK_NAMES.get(name)
        if key is None or key not in self.links:
            known = ", ".join(n for n, k in LINK_NAMES.items() if k in self.links) or "none: plain loopback"
            raise InvalidInputError(f"no link named {name!r} (known: {known})")
        chosen = get_profile(profile, InvalidInputError) if isinstance(profile, str) else profile
        self.links[key].set_profile(chosen)
        return chosen

    @property
    def switchable(self) -> list[Tier]:
        """The tiers that can be taken down and up here: the edge and the cloud, where they run."""
        return [t for t in SWITCHABLE_TIERS if t in self.nodes]

    def tier_down(self, tier: Tier) -> None:
        """Stop a tier's node process (SIMULATED outage of the edge box or the cloud)."""
        self._switchable(tier).stop()

    def tier_up(self, tier: Tier) -> None:
        """Start a stopped tier's node again, on the addresses it had."""
        node = self._switchable(tier)
        if not node.alive():
            self.nodes[tier] = node.restart()

    def _switchable(self, tier: Tier) -> NodeProcess:
        if tier not in self.switchable:
            names = ", ".join(t.value for t in self.switchable)
            raise InvalidInputError(f"tier {tier.value} cannot be taken down or up here (only: {names})")
        return self.nodes[tier]

    def snapshot(self) -> dict[str, Any]:
        """Each link's profile and the bytes it carried, each node's process, and the tiers that can be
        taken down (for the dashboard)."""
        links: dict[str, Any] = {}
        for name, key in LINK_NAMES.items():
            link = self.links.get(key)
            if link is None:
                continue
            p, stats = link.profile, link.stats()
            links[name] = {
                "profile": p.name,
                "rtt_ms": round(p.rtt_s * 1000.0, 3),
                "down_mbps": round(p.down_bps / 1e6, 3),
                "up_mbps": round(p.up_bps / 1e6, 3),
                "bytes_up": stats.up.bytes,
                "bytes_down": stats.down.bytes,
            }
        tiers = {str(t): {"alive": n.alive(), "pid": n.process.pid} for t, n in self.nodes.items()}
        return {"links": links, "tiers": tiers, "switchable": [t.value for t in self.switchable]}

    def stop(self) -> None:
        for link in self.links.values():
            with contextlib.suppress(Exception):
                link.stop()
        for node in self.nodes.values():
            node.stop()


def check_image_models(models: Mapping[Tier, str | Path]) -> None:
    """Refuse, before any process starts, an image model that is missing or of another kind."""
    for model in dict.fromkeys(str(m) for m in models.values()):
        kind = kind_of(model)  # ModelNotFoundError for a file that is not there
        if kind is not ModelKind.IMAGE_GENERATOR:
            raise not_an_image_generator(model, kind)


def deploy_local(
    model: str | Path,
    certs: Path,
    profile: str | LinkProfile | None = "4g",
    *,
    threads: int = 1,
    edge_slowdown: float = 1.0,
    cloud_slowdown: float = 1.0,
    backhaul: LinkProfile | None = BACKHAUL,
    device_cloud: LinkProfile | None = None,
    target: str | None = None,
    seed: int | None = None,
    log_dir: Path | None = None,
    entry: EntrySettings | None = None,
    image_models: Mapping[Tier, str | Path] | None = None,
    image_target: str | None = None,
    detectors: Mapping[Tier, str | Path] | None = None,
    startup_timeout: float = 60.0,
    lanes: bool = True,
    lane_poll_ms: float | None = None,
) -> LocalDeployment:
    """Start cloud and edge nodes serving ``model`` and the emulated links between the tiers.

    With ``entry``, a device node too: the entry point that serves the public API, runs its own
    layer span and reaches the other tiers through the device ends of the links.

    ``certs`` is created with a CA and device/edge/cloud certificates when it does not exist.
    ``target`` makes both nodes serve that target of a ``.tfm`` package (default: each tier's own);
    ``seed`` makes the links' jitter and loss reproducible (the three links get seed, seed+1, seed+2).
    ``device_cloud``: the device's own link towards the cloud, when it is not its access link to the
    edge (the device -> cloud path is that link, then the backhaul).
    ``image_models`` gives a tier's node an image generator next to ``model`` (the device's needs
    ``entry``: without it the device is the caller's own process); ``image_target`` is the target of
    those packages every node serves (default: each tier's own, with its resolution cap).
    ``detectors`` gives a tier's node a crack detector (a file or a bundled name: crack-edge, crack-cloud).
    ``lane_poll_ms``: the nodes' ``--lane-poll-ms`` (default: the node's).
    """
    access = get_profile(profile) if isinstance(profile, str) else profile  # a bad name fails first
    image_models = dict(image_models or {})
    if Tier.DEVICE in image_models and entry is None:
        raise ConfigError("an image model for the device needs a device node: give entry settings")
    check_image_models(image_models)
    backhaul = backhaul if access is not None else None  # plain loopback: no emulator anywhere
    if not (certs / "ca.crt").exists():
        init_pki(certs, [t.value for t in Tier])
    deployment = LocalDeployment(certs, backhaul)
    log = (lambda tier: log_dir / f"{tier}.log") if log_dir else (lambda tier: None)
    seeds = (None, None, None) if seed is None else (seed, seed + 1, seed + 2)

    def extra(tier: Tier) -> list[str]:
        detector = (detectors or {}).get(tier)
        return [
            *(entry.node_args(tier) if entry is not None else []),
            *(["--detector", str(detector)] if detector is not None else []),
            *([] if lanes else ["--no-lanes"]),
            *([] if lane_poll_ms is None else ["--lane-poll-ms", str(lane_poll_ms)]),
        ]

    def emulate(name: str, target: str, link: LinkProfile | None, seed: int | None) -> str:
        """The address that reaches ``target`` through ``link`` (``target`` itself with no link)."""
        if link is None:
            deployment.addresses[name] = target
        else:
            deployment.links[name] = LinkEmulator(target, link, seed=seed).start()
            deployment.addresses[name] = deployment.links[name].hostport
        return deployment.addresses[name]

    try:
        cloud = start_node(
            Tier.CLOUD.value,
            model,
            certs,
            threads=threads,
            slowdown=cloud_slowdown,
            log=log(Tier.CLOUD),
            target_override=target,
            image_model=image_models.get(Tier.CLOUD),
            image_target=image_target,
            extra_args=extra(Tier.CLOUD),
            startup_timeout=startup_timeout,
        )
        deployment.nodes[Tier.CLOUD] = cloud
        to_cloud = emulate(EDGE_CLOUD, cloud.data_plane, backhaul, seeds[0])
        edge = start_node(
            Tier.EDGE.value,
            model,
            certs,
            peers={Tier.CLOUD.value: to_cloud},
            threads=threads,
            slowdown=edge_slowdown,
            log=log(Tier.EDGE),
            target_override=target,
            image_model=image_models.get(Tier.EDGE),
            image_target=image_target,
            extra_args=extra(Tier.EDGE),
            startup_timeout=startup_timeout,
        )
        deployment.nodes[Tier.EDGE] = edge
        emulate(DEVICE_EDGE, edge.data_plane, access, seeds[1])
        # the device's way to the cloud: the access link, then the same backhaul the edge uses
        to_cloud_access = device_cloud if device_cloud is not None and access is not None else access
        emulate(DEVICE_CLOUD, to_cloud, to_cloud_access, seeds[2])
        if entry is not None:
            estimates = {
                "device-edge": access,
                "edge-cloud": backhaul,
                "device-cloud": chain(to_cloud_access, backhaul) if to_cloud_access and backhaul else None,
            }
            links = [
                arg
                for pair, link in estimates.items()
                if link is not None
                for arg in ("--link", f"{pair}={link.name}")
            ]
            deployment.nodes[Tier.DEVICE] = start_node(
                Tier.DEVICE.value,
                model,
                certs,
                peers=deployment.peers,
                threads=threads,
                slowdown=entry.device_slowdown,
                log=log(Tier.DEVICE),
                target_override=target,
                image_model=image_models.get(Tier.DEVICE),
                image_target=image_target,
                extra_args=[*extra(Tier.DEVICE), *links],
                startup_timeout=startup_timeout,
            )
    except BaseException:
        deployment.stop()
        raise
    return deployment
