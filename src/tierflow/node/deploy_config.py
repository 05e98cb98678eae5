"""A deployment over several machines, described in one YAML file (docs/DEPLOY.md).

::

    model: demo-lm
    image_model: demo-image          # optional; a bundled name, .onnx or .tfm
    certs: pki                        # the CA and the nodes' certificates (tierflow certs init)
    store: redis://10.0.0.5:6379/0    # contexts and API keys: SQLite on the device's host, or Redis
    hosts: {phone: 10.0.0.2, box: 10.0.0.3}
    nodes:
      device: {host: phone, data_plane: 9100, http: 8700, slowdown: 4}
      edge:   {host: box, data_plane: 9200, http: 9201, detector: crack-edge}
      cloud:  {host: box, data_plane: 9300, http: 9301, detector: crack-cloud}
    links: {device-edge: wifi, device-cloud: 4g+backhaul, edge-cloud: backhaul}  # planning estimates
    spans: device=0-1,edge=2-3,cloud=4-5   # optional: fixed layer spans
    routing: routing.yaml                  # optional: rules, energy policy, priors

``tierflow up --config deploy.yaml --machine box`` starts the nodes of host ``box`` (the cloud first,
then the edge, then the device), each listening on its host's address, reaching the others at
theirs: real sockets, no emulated links. Relative paths are relative to the file. A node that
starts before the tiers it reaches is fine: the entry point asks again for a tier that was down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tierflow.errors import ConfigError
from tierflow.types.links import get_profile
from tierflow.types.tiers import Tier

START_ORDER = (Tier.CLOUD, Tier.EDGE, Tier.DEVICE)  # a node's next tiers are up before it, on one host
NEXT_TIERS = {Tier.DEVICE: (Tier.EDGE, Tier.CLOUD), Tier.EDGE: (Tier.CLOUD,), Tier.CLOUD: ()}
Port = Annotated[int, Field(ge=1, le=65535)]


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str
    data_plane: Port
    http: Port
    slowdown: float = Field(1.0, ge=1.0)
    threads: int = Field(1, ge=1)
    memory_mib: float | None = Field(None, gt=0)
    detector: str | None = None  # a crack detector this node serves (crack-edge, crack-cloud or a file)


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "demo-lm"
    image_model: str | None = None
    certs: Path
    store: str | None = None
    hosts: dict[str, str]
    nodes: dict[Tier, NodeSpec]
    links: dict[str, str] = Field(default_factory=dict)
    spans: str | None = None
    routing: Path | None = None
    expires_in: float = Field(3600.0, gt=0)
    kv_mib: float = Field(256.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        missing = [t.value for t in Tier if t not in self.nodes]
        if missing:
            raise ValueError(f"nodes: every tier needs a node (missing: {', '.join(missing)})")
        for tier, node in self.nodes.items():
            if node.host not in self.hosts:
                known = ", ".join(self.hosts)
                raise ValueError(f"nodes.{tier.value}.host: {node.host!r} is not one of hosts ({known})")
        taken: dict[tuple[str, int], str] = {}
        for tier, node in self.nodes.items():
            for kind, port in (("data_plane", node.data_plane), ("http", node.http)):
                where = (self.hosts[node.host], port)
                if where in taken:
                    raise ValueError(
                        f"nodes.{tier.value}.{kind}: {where[0]}:{port} is taken by {taken[where]}"
                    )
                taken[where] = f"nodes.{tier.value}.{kind}"
        if not self.store:
            raise ValueError("store: the device node (the entry point) needs one: SQLite or redis://")
        for pair, profile in self.links.items():
            a, _, b = pair.partition("-")
            if {a, b} - {t.value for t in Tier} or a == b:
                raise ValueError(f"links: a link is named tier-tier (device-edge, ...), not {pair!r}")
            get_profile(profile)  # ConfigError names the known profiles
        return self

    @classmethod
    def load(cls, path: str | Path) -> DeployConfig:
        """Read and check a deployment file; every problem is one ConfigError naming its field."""
        path = Path(path)
        try:
            data: Any = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"deployment config {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())[:200]
            raise ConfigError(f"deployment config {path}: not YAML ({problem})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"deployment config {path}: expected a mapping")
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"deployment config {path}: {where + ': ' if where else ''}{message}") from None
        return config.relative_to(path.parent)

    def relative_to(self, folder: Path) -> DeployConfig:
        """Paths in the file are relative to its folder."""
        def near(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else folder / p

        store = self.store
        if store and "://" not in store and not Path(store).is_absolute():
            store = str(folder / store)
        def file(name: str | None) -> str | None:  # a bundled name stays a name
            return name if name is None or not name.endswith((".onnx", ".tfm")) else str(near(Path(name)))

        nodes = {t: n.model_copy(update={"detector": file(n.detector)}) for t, n in self.nodes.items()}
        return self.model_copy(update={
            "certs": near(self.certs), "routing": near(self.routing), "store": store,
            "model": file(self.model), "image_model": file(self.image_model), "nodes": nodes,
        })

    def address(self, tier: Tier, kind: str = "data_plane") -> str:
        node = self.nodes[tier]
        return f"{self.hosts[node.host]}:{node.data_plane if kind == 'data_plane' else node.http}"

    def tiers_on(self, host: str | None) -> list[Tier]:
        """The tiers whose nodes run on ``host`` (None: every tier: all on this machine), in start order."""
        if host is not None and host not in self.hosts:
            raise ConfigError(f"--machine {host!r} is not one of the file's hosts ({', '.join(self.hosts)})")
        return [t for t in START_ORDER if host is None or self.nodes[t].host == host]

    def node_args(self, tier: Tier) -> list[str]:
        """The ``tierflow node`` options of ``tier``'s node (listen addresses, peers, the entry point's)."""
        node = self.nodes[tier]
        args = ["--listen", self.address(tier), "--http", self.address(tier, "http")]
        args += ["--kv-mib", str(self.kv_mib)]
        for peer in NEXT_TIERS[tier]:
            args += ["--peer", f"{peer.value}={self.address(peer)}"]
        if node.memory_mib:
            args += ["--memory", str(node.memory_mib)]
        if node.detector:
            args += ["--detector", node.detector]
        if tier is Tier.DEVICE:
            if not self.store:
                raise ConfigError("deployment config: store is needed for the device node (the entry point)")
            args += ["--store", self.store, "--expires-in", str(self.expires_in)]
            for pair, profile in self.links.items():
                args += ["--link", f"{pair}={profile}"]
            args += ["--spans", self.spans] if self.spans else []
            args += ["--routing", str(self.routing)] if self.routing else []
        return args
