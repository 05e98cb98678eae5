"""``tierflow up``: a device, edge and cloud deployment on this machine, until Ctrl-C or SIGTERM.

For a language model the device node is the entry point: it serves the public API (``/generate``,
the OpenAI routes, ``/contexts``) on ``--port`` and drives the edge and cloud nodes over the secure
data plane, through emulated links. For other models the edge and cloud nodes serve split requests
from the caller's own process, as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tierflow.cli._common import StopSignals, err_console, parse_assignments, spinner
from tierflow.errors import ConfigError
from tierflow.types import Tier

if TYPE_CHECKING:
    from tierflow.node.deploy import EntrySettings, LocalDeployment
    from tierflow.types.links import LinkProfile


def default_store() -> Path:
    """The embedded context store of a local deployment (contexts and API keys survive restarts)."""
    from tierflow.model.registry import tierflow_home

    return tierflow_home() / "contexts.sqlite"


def parse_memory(items: list[str]) -> dict[Tier, float]:
    """``["device=64", "edge=512"]`` -> MiB per tier."""
    out: dict[Tier, float] = {}
    for name, value in parse_assignments(items, "--memory", "TIER=MIB (device=64)").items():
        try:
            out[Tier(name)] = float(value)
        except ValueError:
            raise ConfigError(f"--memory expects TIER=MIB (device=64), got '{name}={value}'") from None
        if out[Tier(name)] <= 0:
            raise ConfigError(f"--memory expects TIER=MIB with MIB > 0, got '{name}={value}'")
    return out


def parse_links(items: list[str], access: str) -> dict[str, LinkProfile]:
    """``["edge-cloud=3g"]`` -> profiles by link name (a bad name or profile: one-line ConfigError)."""
    from tierflow.node.deploy import LINK_NAMES
    from tierflow.types.links import get_profile

    get_profile(access)  # --profile itself first
    out: dict[str, LinkProfile] = {}
    for name, value in parse_assignments(items, "--link", "LINK=PROFILE (edge-cloud=3g)").items():
        if name not in LINK_NAMES:
            raise ConfigError(f"--link names one of {', '.join(LINK_NAMES)}, not {name!r}")
        out[name] = get_profile(value)
    return out


def check_fixed_spans(model: str, spans: str, target: str | None) -> None:
    """Raise a one-line error unless ``spans`` cover the LM's layers exactly, in tier order."""
    import onnx

    from tierflow.engine.sharded import parse_spans
    from tierflow.model import lm_contract as lc
    from tierflow.node.executor import load_node_model

    data, _ = load_node_model(model, Tier.CLOUD.value, target)
    parse_spans(spans, lc.layer_count([x.name for x in onnx.load_from_string(data).graph.input]))


def up(
    model: str = typer.Argument("demo-lm", help="Model every tier serves: .onnx, .tfm or a bundled name."),
    profile: str = typer.Option(
        "4g", "--profile", help="SIMULATED access link of the device (2g..datacenter)."
    ),
    link: list[str] = typer.Option(
        [],
        "--link",
        help="SIMULATED profile of one link: device-edge=wifi, device-cloud=4g, edge-cloud=3g "
        "(repeatable; device-edge and device-cloud default to --profile, edge-cloud to the backhaul).",
    ),
    port: int = typer.Option(8700, "--port", min=0, max=65535, help="The entry point's HTTP port (0: any)."),
    host: str = typer.Option("127.0.0.1", "--host", help="The entry point's HTTP address."),
    spans: str | None = typer.Option(
        None,
        "--spans",
        help="Fixed layer spans (inclusive), e.g. device=0-1,edge=2-4,cloud=5-6; default: planned.",
    ),
    memory: list[str] = typer.Option(
        [],
        "--memory",
        help="SIMULATED memory budget of a tier, TIER=MIB (repeatable): a layer span that "
        "does not fit there is never planned there.",
    ),
    kv_mib: float = typer.Option(256.0, "--kv-mib", help="KV cache each node keeps in memory, MiB."),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Context store: a SQLite file or a redis:// url (default: in the tierflow home).",
    ),
    expires_in: float = typer.Option(3600.0, "--expires-in", help="Default lifetime of a context, seconds."),
    certs: Path = typer.Option(
        Path("tierflow-pki"), "--certs", help="Certificates folder (made if missing)."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Target of a .tfm every node serves (default: each tier's own; for a language model, "
        "'cloud' on every tier: its layer spans must come from one model).",
    ),
    image_model: str | None = typer.Option(
        "demo-image",
        "--image-model",
        help="An image generator every node serves next to a language MODEL: .onnx, .tfm or a bundled "
        "name, compiled into a package on first run (each tier its own target, with its resolution "
        "cap); 'none': no images.",
    ),
    image_target: str | None = typer.Option(
        None, "--image-target", help="Target of the --image-model .tfm every node serves."
    ),
    detectors: str = typer.Option(
        "edge=crack-edge,cloud=crack-cloud",
        "--detectors",
        help="Crack detectors for POST /v1/inspections, as TIER=MODEL pairs (.onnx or bundled name); "
        "'none': no inspection.",
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads per node."),
    lane_poll_ms: float | None = typer.Option(
        None,
        "--lane-poll-ms",
        min=0,
        max=1000,
        help="How long each node's decode lanes poll for a message (tierflow node --lane-poll-ms; "
        "default: the node's, 5 ms; 0: off). The device's lanes stop polling on battery.",
    ),
    edge_slowdown: float = typer.Option(1.0, "--edge-slowdown", min=1.0, help="SIMULATED slower edge box."),
    device_slowdown: float = typer.Option(1.0, "--device-slowdown", min=1.0, help="SIMULATED slower device."),
    duration: float = typer.Option(
        0.0, "--duration", min=0.0, help="Stop after this many seconds (0: Ctrl-C)."
    ),
    routing: str | None = typer.Option(
        None, "--routing", help="Routing rules, energy policy and priors (YAML, docs/ROUTING.md)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A deployment over several machines (YAML, docs/DEPLOY.md): this one's nodes."
    ),
    machine: str | None = typer.Option(
        None, "--machine", help="With --config: which of its hosts this is (default: every node here)."
    ),
) -> None:
    """Start a local deployment; print one JSON line with its addresses (and `api`, `api_key`), then serve."""
    from tierflow.context.factory import open_store
    from tierflow.context.local_key import local_key
    from tierflow.model.registry import kind_of, tierflow_home
    from tierflow.node.deploy import EntrySettings, deploy_local
    from tierflow.types import ModelKind
    from tierflow.types.links import BACKHAUL

    if config is not None:
        _up_from_config(config, machine, duration)
        return
    links = parse_links(link, profile)
    entry: EntrySettings | None = None
    api_key: str | None = None
    if kind_of(model) is ModelKind.CAUSAL_LM:
        if target is None and model.endswith(".tfm"):
            target = "cloud"  # the phone target of an LM exits early: its layers are not the others'
        if spans:
            check_fixed_spans(model, spans, target)  # before any process starts: a one-line error
        if routing:
            from tierflow.router.config import RoutingConfig

            RoutingConfig.load(routing)  # the same: a bad file fails here, not in the device node
        store_spec = store or str(default_store())
        opened = open_store(store_spec)
        try:
            api_key = local_key(opened, tierflow_home() / "api-key")
        finally:
            opened.close()
        entry = EntrySettings(
            store=store_spec,
            http=f"{host}:{port}",
            spans=spans,
            memory_mib=parse_memory(memory),
            kv_mib=kv_mib,
            expires_in=expires_in,
            device_slowdown=device_slowdown,
            routing=routing,
        )
    running = [Tier.DEVICE, Tier.EDGE, Tier.CLOUD] if entry else [Tier.EDGE, Tier.CLOUD]
    detector_models = _detectors(detectors) if entry is not None else {}  # inspection needs the entry point
    image_model = _image_model(image_model, lm_deployment=entry is not None)
    image_models = {tier: image_model for tier in running} if image_model else {}
    control = None
    if entry is not None:  # the dashboard's and `tierflow link set`'s way to the links and processes
        from tierflow.api.deployment_client import TOKEN_ENV
        from tierflow.node.deployment_control import DeploymentControl

        control = DeploymentControl()
        entry = dataclasses.replace(entry, deployment_url=control.start(), lite_model=_lite_model(model))
        os.environ[TOKEN_ENV] = control.token  # the device node inherits it; it is on no command line
    # SIGINT or SIGTERM (Ctrl-C, a service manager, a test) stops the node processes this one started,
    # also when it was started with SIGINT ignored; one during start-up stops it as soon as it is up
    with StopSignals() as stop:
        tiers = "device, edge and cloud" if entry else "edge and cloud"
        with spinner(f"starting {tiers} nodes for {model}"):
            deployment = deploy_local(
                model,
                certs,
                links.get("device-edge", profile),
                threads=threads,
                edge_slowdown=edge_slowdown,
                target=target,
                entry=entry,
                image_models=image_models,
                image_target=image_target,
                detectors=detector_models,
                backhaul=links.get("edge-cloud", BACKHAUL),
                device_cloud=links.get("device-cloud"),
                lane_poll_ms=lane_poll_ms,
            )
        if control is not None:
            control.deployment = deployment
        try:
            if not stop.requested:
                _serve(deployment, profile, certs, api_key, stop, duration)
        finally:
            deployment.stop()
            if control is not None:
                control.stop()


def _up_from_config(path: Path, machine: str | None, duration: float) -> None:
    """The nodes of one machine of a deployment file, until Ctrl-C or SIGTERM."""
    from tierflow.context.factory import open_store
    from tierflow.context.local_key import local_key
    from tierflow.model.registry import tierflow_home
    from tierflow.node.deploy_config import DeployConfig
    from tierflow.node.launch import NodeProcess, start_node
    from tierflow.transport.certs import init_pki

    config = DeployConfig.load(path)
    tiers = config.tiers_on(machine)
    if not tiers:
        raise ConfigError(f"no node of {path} runs on host {machine!r}")
    if not (config.certs / "ca.crt").exists():
        init_pki(config.certs, [t.value for t in Tier])
    api_key = None
    if Tier.DEVICE in tiers:
        opened = open_store(config.store or str(default_store()))
        try:
            api_key = local_key(opened, tierflow_home() / "api-key")
        finally:
            opened.close()
    image_model = _image_model(config.image_model, lm_deployment=True)
    started: dict[Tier, NodeProcess] = {}
    with StopSignals() as stop:
        try:
            for tier in tiers:
                node = config.nodes[tier]
                with spinner(f"starting the {tier.value} node on {config.hosts[node.host]}"):
                    started[tier] = start_node(
                        tier.value, config.model, config.certs, threads=node.threads, slowdown=node.slowdown,
                        image_model=image_model, extra_args=config.node_args(tier), startup_timeout=120.0,
                    )
                if stop.requested:
                    return
            info: dict[str, object] = {
                "nodes": {t.value: {"data_plane": p.data_plane, "http": p.http, "pid": p.process.pid}
                          for t, p in started.items()},
            }
            if Tier.DEVICE in started:
                api = f"http://{started[Tier.DEVICE].http}"
                info.update(api=api, api_key=api_key, dashboard=f"{api}/dashboard#key={api_key}")
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
            here = ", ".join(t.value for t in started)
            err_console.print(f"[bold]ready[/]: {here} of {path}", highlight=False)
            stop.wait(duration if duration > 0 else None)
        finally:
            for process in reversed(list(started.values())):
                process.stop()


def _detectors(spec: str) -> dict[Tier, str]:
    """``--detectors``: TIER=MODEL pairs, each model checked to be a crack detector before anything starts."""
    from tierflow.model.registry import BUNDLED, resolve_model
    from tierflow.runtime.crack_detector import CrackDetector
    from tierflow.types import ModelKind

    if spec.strip().lower() == "none":
        return {}
    pairs = parse_assignments([p for p in spec.split(",") if p.strip()], "--detectors", "TIER=MODEL")
    out: dict[Tier, str] = {}
    for name, model in pairs.items():
        tier = next((t for t in Tier if t.value == name), None)
        if tier is None:
            raise ConfigError(f"--detectors: no tier {name!r} (device, edge or cloud)")
        if model in BUNDLED and BUNDLED[model].kind is not ModelKind.CRACK_DETECTOR:
            raise ConfigError(f"--detectors: {model} is not a crack detector")
        if model not in BUNDLED:
            CrackDetector.open(resolve_model(model))  # a one-line error for a file that is not one
        out[tier] = model
    return out


def _lite_model(model: str) -> str | None:
    """The device's early-exit LM: the bundled LM's package (its phone target), compiled on first run."""
    from tierflow.model.registry import BUNDLED

    if model.endswith(".tfm"):
        return model  # a package: its own phone target
    return _compiled(model, f"{model}'s early-exit target") if model in BUNDLED else None


def _image_model(name: str | None, *, lm_deployment: bool) -> str | None:
    """What every node serves as its image generator: a bundled name becomes its compiled package."""
    from tierflow.model.registry import BUNDLED

    if name is None or name.lower() == "none" or not lm_deployment:
        return None
    return _compiled(name, name) if name in BUNDLED else name


def _compiled(name: str, what: str) -> str:
    """Bundled model ``name``'s package in the tierflow home, compiled on first run (with a spinner)."""
    from tierflow.compiler.bundled import bundled_package
    from tierflow.model.registry import tierflow_home

    with spinner(f"preparing {what}"):
        return str(bundled_package(name, tierflow_home()))


def _serve(
    deployment: LocalDeployment,
    profile: str,
    certs: Path,
    api_key: str | None,
    stop: StopSignals,
    duration: float,
) -> None:
    """Print the deployment's addresses, then wait for a stop (or the end of ``duration``)."""
    info = {**deployment.describe(), "api_key": api_key}
    if deployment.api is not None:
        info["dashboard"] = f"{deployment.api}/dashboard#key={api_key}"
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    if deployment.api is not None:
        hint = (
            f"  the dashboard: {info['dashboard']}\n"
            f"  TIERFLOW_URL={deployment.api} TIERFLOW_API_KEY={api_key} tierflow generate 'def '\n"
            f"  OpenAI clients: base_url={deployment.api}/v1, the same key"
        )
    else:
        cloud_link = info["device_links"]["device->cloud"]  # type: ignore[index]
        hint = (
            f"  TIERFLOW_CLOUD={cloud_link} TIERFLOW_CERTS={certs} "
            "tierflow run MODEL.tfm --target cloud-proxy --prompt ..."
        )
    err_console.print(
        f"[bold]ready[/]: device -> edge/cloud over a simulated {profile} link. Try:\n{hint}",
        highlight=False,
        soft_wrap=True,
    )
    stop.wait(duration if duration > 0 else None)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
