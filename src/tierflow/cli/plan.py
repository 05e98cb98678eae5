"""``tierflow plan``: where to cut a model between device, edge and cloud, from measurements.

The tiers are profiled on this machine (see :mod:`tierflow.profiling.local`): the
device runs the model with a simulated slowdown, the edge is this machine, the
cloud this machine at a documented speed-up -- or either remote tier from the
stage timings it reported (``--edge-stats`` / ``--cloud-stats``). The links come
from a named network profile. The exact search picks the plan; the table shows
it next to the single-tier and best two- and three-tier alternatives.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tierflow.cli._common import console, print_table, spinner
from tierflow.errors import ConfigError
from tierflow.planner.estimate import DeviceMonitor
from tierflow.planner.graph import GRANULARITIES, UnitGraph
from tierflow.planner.plan import Plan
from tierflow.planner.power import DevicePower, radio_for_profile
from tierflow.planner.profile import TierProfile
from tierflow.planner.search import alternatives, grid_size, plan
from tierflow.planner.snapshot import Snapshot, links_for
from tierflow.profiling.graph_builder import build_unit_graph
from tierflow.profiling.local import LocalProfiler, TierSetup, load_model
from tierflow.profiling.profiler import ProfileCache, load_timings
from tierflow.runtime.session import SessionOptions
from tierflow.types import QuantMode, Tier
from tierflow.types.links import PROFILES, Direction, get_profile

DEFAULT_SLOWDOWN = 4.0  # the simulated device is this many times slower than this machine
DEFAULT_CLOUD_SPEEDUP = 4.0  # the stand-in cloud is this many times faster (docs/PLANNER.md)


def _dims(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"--dim takes SYMBOL=N, got {item!r}")
        out[name.strip()] = int(value)
    return out


def plan_command(
    model: Annotated[str, typer.Argument(help="A bundled model name, an .onnx file or a .tfm package.")],
    profile: Annotated[str, typer.Option("--profile", help=f"Network ({', '.join(PROFILES)}).")] = "4g",
    backhaul: Annotated[
        str | None, typer.Option("--backhaul", help="Edge-cloud profile (default: 1 Gbit/s, 10 ms).")
    ] = None,
    device_slowdown: Annotated[
        float, typer.Option("--device-slowdown", min=1.0, help="Simulated device: x slower than here.")
    ] = DEFAULT_SLOWDOWN,
    edge_speedup: Annotated[
        float, typer.Option("--edge-speedup", min=0.01, help="Stand-in edge: x faster than this machine.")
    ] = 1.0,
    cloud_speedup: Annotated[
        float, typer.Option("--cloud-speedup", min=0.01, help="Stand-in cloud: x faster than this machine.")
    ] = DEFAULT_CLOUD_SPEEDUP,
    edge_stats: Annotated[
        Path | None, typer.Option("--edge-stats", help="Stage timings the edge reported (JSON).")
    ] = None,
    cloud_stats: Annotated[
        Path | None, typer.Option("--cloud-stats", help="Stage timings the cloud reported (JSON).")
    ] = None,
    energy_weight: Annotated[
        float, typer.Option("--energy-weight", min=0.0, help="w in latency + w * device energy (s/J).")
    ] = 0.0,
    battery: Annotated[
        float | None, typer.Option("--battery", min=0.0, max=100.0, help="Battery %% (default: read it).")
    ] = None,
    compression: Annotated[
        str, typer.Option("--compression", help=f"Frames: {', '.join(QuantMode)}.")
    ] = QuantMode.INT8,
    privacy: Annotated[bool, typer.Option("--privacy", help="The raw input stays on the device.")] = False,
    granularity: Annotated[
        str, typer.Option("--granularity", help=f"Units: {', '.join(GRANULARITIES)}.")
    ] = "auto",
    dim: Annotated[list[str] | None, typer.Option("--dim", help="Input size SYMBOL=N (e.g. seq=64).")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target of a .tfm package.")] = None,
    device_memory: Annotated[
        float | None, typer.Option("--device-memory", min=0.01, help="Memory (MiB) a device stage may use.")
    ] = None,
    device_load: Annotated[
        float | None, typer.Option("--device-load", min=0.0, max=1.0, help="Device load now (0..1).")
    ] = None,
    no_edge: Annotated[bool, typer.Option("--no-edge", help="The edge is unavailable.")] = False,
    no_cloud: Annotated[bool, typer.Option("--no-cloud", help="The cloud is unavailable.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="ONNX Runtime threads per tier.")] = 1,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per measurement.")] = 3,
    reprofile: Annotated[bool, typer.Option("--reprofile", help="Ignore cached profiles.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Choose where to cut MODEL between device, edge and cloud, and show the alternatives."""
    access = get_profile(profile)
    back = get_profile(backhaul) if backhaul else None
    try:
        quant = QuantMode(compression)
    except ValueError:
        known = ", ".join(QuantMode)
        raise ConfigError(f"--compression must be one of {known}, got {compression!r}") from None
    if granularity not in GRANULARITIES:
        raise ConfigError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    proto, label = load_model(model, target)
    graph = build_unit_graph(proto, dims=_dims(dim or []), granularity=granularity)
    edge_timings = tuple(load_timings(edge_stats)) if edge_stats else ()
    cloud_timings = tuple(load_timings(cloud_stats)) if cloud_stats else ()
    setups = [
        TierSetup(Tier.DEVICE, slowdown=device_slowdown),
        TierSetup(Tier.EDGE, speedup=edge_speedup, timings=edge_timings),
        TierSetup(Tier.CLOUD, speedup=cloud_speedup, timings=cloud_timings),
    ]
    monitor = DeviceMonitor(threads)
    profiler = LocalProfiler(
        proto,
        graph,
        SessionOptions(intra_op_threads=threads),
        runs=runs,
        cache=ProfileCache(),
        refresh=reprofile,
        monitor=monitor,
    )
    with spinner(f"profiling {label} on device, edge and cloud"):
        profiles = profiler.profiles(setups)
    now = monitor.read(window_s=0.5)
    load = device_load if device_load is not None else now.load
    level = battery / 100.0 if battery is not None else now.battery
    # the device's load now against its load when profiled scales its compute; the other tiers
    # are not watched from here, so they are taken to run as they did when profiled
    memory = device_memory * 2**20 if device_memory else None
    tiers = (
        profiles[Tier.DEVICE].to_state(load=load, memory_bytes=memory),
        profiles[Tier.EDGE].to_state(load=profiles[Tier.EDGE].load, available=not no_edge),
        profiles[Tier.CLOUD].to_state(load=profiles[Tier.CLOUD].load, available=not no_cloud),
    )
    links = links_for(access, back) if back else links_for(access)
    snapshot = Snapshot(
        tiers=tiers,
        links=links,
        compression=quant,
        energy_weight=energy_weight,
        battery=level,
        power=DevicePower(radio=radio_for_profile(access.name)),
        privacy=privacy,
    )
    chosen = plan(graph, snapshot)
    alts = alternatives(graph, snapshot)
    grid = grid_size(graph, snapshot)
    if grid is not None and chosen.relays:
        grid += 1  # the grid adds a chosen plan in which a tier only relays
    report = _report(label, graph, snapshot, access.describe(), setups, profiles, chosen, alts, grid)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print(report, graph, chosen)


# --- output --------------------------------------------------------------------------------


def plan_json(p: Plan) -> dict[str, Any]:
    """A plan as JSON: placement, stages, transfers and the prediction (ms, J)."""
    pred = p.prediction
    return {
        "kind": p.kind(),
        "placement": p.describe(),
        "path": list(p.path),
        "assignment": p.assignment,
        "stages": [s.model_dump() for s in p.stages],
        "transfers": [
            {
                "from": h.src,
                "to": h.dst,
                "direction": h.direction,
                "tensors": list(h.tensors),
                "raw_bytes": h.raw_bytes,
                "wire_bytes": h.wire_bytes,
                "ms": h.seconds * 1e3,
            }
            for h in pred.traffic
        ],
        "latency_ms": pred.latency_s * 1e3,
        "compute_ms": {k: v * 1e3 for k, v in pred.compute_s.items()},
        "transfer_ms": pred.transfer_s * 1e3,
        "link_ms": pred.link_s * 1e3,
        "device_energy_j": pred.device_energy_j,
        "score": pred.score,
        "exact": p.exact,
    }


def _report(
    label: str,
    graph: UnitGraph,
    snapshot: Snapshot,
    link: str,
    setups: list[TierSetup],
    profiles: dict[str, TierProfile],
    chosen: Plan,
    alts: dict[str, Plan | str],
    grid: int | None,
) -> dict[str, Any]:
    return {
        "model": label,
        "model_sha256": graph.model_sha256,
        "granularity": graph.granularity,
        "input_shapes": {k: list(v) for k, v in graph.input_shapes.items()},
        "units": [
            {"name": u.name, "nodes": len(u.nodes), "weight_bytes": u.weight_bytes, "macs": u.macs}
            for u in graph.units
        ],
        "link": link,
        "links": [x.model_dump() for x in snapshot.links],
        "tiers": {
            s.name: {
                "profile": s.how,
                "source": profiles[s.name].source,
                "model_ms": profiles[s.name].total_s * 1e3,
                "available": snapshot.tier(s.name).available,
                "load": snapshot.tier(s.name).load,
            }
            for s in setups
        },
        "battery": snapshot.battery,
        "energy_weight": snapshot.energy_weight,
        "compression": snapshot.compression,
        "privacy": snapshot.privacy,
        "candidate_plans": grid,
        "chosen": plan_json(chosen),
        "alternatives": {k: plan_json(v) if isinstance(v, Plan) else {"error": v} for k, v in alts.items()},
    }


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _short(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit})" if len(names) > limit else "")


def _print(report: dict[str, Any], graph: UnitGraph, chosen: Plan) -> None:
    head = f"[bold]{report['model']}[/]  {graph.describe()}  link {report['link']}"
    console.print(head, highlight=False, soft_wrap=True)
    for name, t in report["tiers"].items():
        state = "" if t["available"] else "  [red]unavailable[/]"
        line = f"  {name:6} whole model {t['model_ms']:8.2f} ms  ({t['profile']}; load {t['load']:.0%})"
        line += state
        console.print(line, highlight=False)
    c = report["chosen"]
    console.print(f"\n[bold]chosen[/]: {c['placement']}", highlight=False, soft_wrap=True)
    stages = Table("tier", "units", "compute ms", "keeps")
    for s in chosen.stages:
        units = _short(list(s.units), 4) if s.units else "(relays)" if s.tier != chosen.path[0] else "-"
        stages.add_row(s.tier, units, f"{c['compute_ms'][s.tier]:.2f}", _short(list(s.keeps), 2) or "-")
    print_table(stages)
    if c["transfers"]:
        cuts = Table("hop", "tensors", "bytes", "on the wire", "ms")
        for h in c["transfers"]:
            hop = f"{h['from']} -> {h['to']}" + (" (results)" if h["direction"] == Direction.DOWN else "")
            cuts.add_row(
                hop,
                _short(h["tensors"]),
                _human_bytes(h["raw_bytes"]),
                _human_bytes(h["wire_bytes"]),
                f"{h['ms']:.2f}",
            )
        print_table(cuts)
    console.print(
        f"predicted latency [bold]{c['latency_ms']:.2f} ms[/] (compute {sum(c['compute_ms'].values()):.2f}, "
        f"transfer {c['transfer_ms']:.2f}, RTT {c['link_ms']:.2f}), device energy "
        f"[bold]{c['device_energy_j']:.3f} J[/], score {c['score']:.4f}",
        highlight=False,
        soft_wrap=True,
    )
    alts = Table("alternative", "tiers", "placement", "latency ms", "energy J", "vs chosen")
    alts.columns[2].overflow = "fold"
    for name, a in report["alternatives"].items():
        if "error" in a:
            alts.add_row(name, "-", a["error"], "-", "-", "-")
            continue
        ratio = a["latency_ms"] / c["latency_ms"] if c["latency_ms"] else 1.0
        alts.add_row(
            name,
            a["kind"],
            a["placement"],
            f"{a['latency_ms']:.2f}",
            f"{a['device_energy_j']:.3f}",
            f"{ratio:.2f}x",
        )
    print_table(alts)
    grid = report["candidate_plans"]
    if grid is not None:
        console.print(f"[dim]{grid} candidate plans on the grid (what tierflow bench split measures)[/]")
    else:
        console.print("[dim]over 5000 candidate plans at this granularity: the grid needs coarser units[/]")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
