"""``tierflow node``: run one tier (device, edge or cloud) as its own process."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from tierflow.cli._common import StopSignals, parse_assignments
from tierflow.errors import ConfigError
from tierflow.transport.lane import DEFAULT_POLL_S
from tierflow.types import Tier


def node(
    tier: Tier = typer.Option(..., "--tier", help="Which tier this process is."),
    model: str = typer.Option(..., "--model", "-m", help="Model: .onnx, .tfm or a bundled name."),
    certs: Path = typer.Option(..., "--certs", help="Folder made by `tierflow certs init`."),
    listen: str = typer.Option("127.0.0.1:0", "--listen", help="Data plane HOST:PORT (mTLS gRPC)."),
    http: str = typer.Option("127.0.0.1:0", "--http", help="Control plane HOST:PORT (health, metrics)."),
    peer: list[str] = typer.Option(
        [], "--peer", help="Next tier as NAME=HOST:PORT (repeatable), e.g. cloud=127.0.0.1:9300."
    ),
    target: str | None = typer.Option(None, "--target", help="Target of a .tfm (default: the tier's own)."),
    image_model: str | None = typer.Option(
        None,
        "--image-model",
        help="An image generator served next to --model (generate_image): .onnx, .tfm or a bundled name.",
    ),
    image_target: str | None = typer.Option(
        None, "--image-target", help="Target of the --image-model .tfm (default: the tier's own)."
    ),
    detector: str | None = typer.Option(
        None, "--detector", help="A crack detector served next to --model (detect_cracks): .onnx or a "
        "bundled name (crack-edge, crack-cloud)."
    ),
    name: str | None = typer.Option(None, "--name", help="Certificate name (default: the tier)."),
    threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime intra-op threads (0 = auto)."),
    slowdown: float = typer.Option(
        1.0, "--slowdown", min=1.0, help="SIMULATED weaker hardware: stages take this many times as long."
    ),
    memory: float | None = typer.Option(
        None,
        "--memory",
        help="SIMULATED memory budget, MiB: an LM layer span that does not fit is never "
        "planned on this node.",
    ),
    kv_mib: float = typer.Option(
        256.0, "--kv-mib", help="KV cache kept in memory, MiB (LRU contexts evicted)."
    ),
    lanes: bool = typer.Option(
        True,
        "--lanes/--no-lanes",
        help="Decode steps to and from directly reachable peers over a second, blocking TLS port "
        "(the data plane otherwise).",
    ),
    lane_poll_ms: float = typer.Option(
        DEFAULT_POLL_S * 1000,
        "--lane-poll-ms",
        min=0,
        max=1000,
        help="How long a decode lane polls for its next message: at once when its waits are that "
        "short, else from half this before the message is due. Faster hand-offs for CPU time "
        "(0: always sleep, e.g. on battery).",
    ),
    spans: str | None = typer.Option(
        None, "--spans", help="Entry point: fixed LM layer spans, e.g. device=0-1,edge=2-4,cloud=5-6."
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Entry point: the context store, a SQLite file or a redis:// url. "
        "Setting it makes this node serve the public API.",
    ),
    link: list[str] = typer.Option(
        [], "--link", help="Entry point: planning estimate of a link, e.g. device-edge=wifi (repeatable)."
    ),
    expires_in: float = typer.Option(3600.0, "--expires-in", help="Default lifetime of a context, seconds."),
    routing: str | None = typer.Option(
        None, "--routing", help="Entry point: routing rules, energy policy, priors (YAML, docs/ROUTING.md)."
    ),
    lite_model: str | None = typer.Option(
        None, "--lite-model", help="Entry point: the phone's early-exit LM (a .tfm: its phone target)."
    ),
    deployment_url: str | None = typer.Option(
        None, "--deployment-url", help="Entry point: the local deployment's control URL (set by tierflow up)."
    ),
) -> None:
    """Serve a tier: its model's stages over the secure data plane, health and metrics over HTTP.

    Prints one JSON line with the bound addresses once ready.
    """
    from tierflow.node.config import NodeConfig
    from tierflow.node.server import serve
    from tierflow.transport.loop import run

    peers = parse_assignments(peer, "--peer", "NAME=HOST:PORT")
    links = parse_assignments(link, "--link", "TIER-TIER=PROFILE")
    try:
        config = NodeConfig(
            tier=tier,
            model=model,
            certs=certs,
            listen=listen,
            http=http,
            target=target,
            image_model=image_model,
            image_target=image_target,
            detector=detector,
            name=name,
            threads=threads,
            slowdown=slowdown,
            peers=peers,
            memory_mib=memory,
            kv_mib=kv_mib,
            lanes=lanes,
            lane_poll_ms=lane_poll_ms,
            spans=spans,
            store=store,
            links=links,
            expires_in=expires_in,
            routing=routing,
            deployment_url=deployment_url,
            lite_model=lite_model,
        )
    except ValidationError as exc:
        raise ConfigError("; ".join(e["msg"] for e in exc.errors())) from exc
    # SIGINT or SIGTERM shuts the node down cleanly, also when it was started with SIGINT ignored
    with StopSignals() as stop:
        run(serve(config, stop.wait_async))  # on uvloop where installed (transport/loop.py)


def register(app: typer.Typer) -> None:
    app.command("node")(node)
