"""``tierflow link``: run the user-space link emulator between two tiers, or change a deployment's.

    tierflow link --listen 127.0.0.1:9001 --upstream 127.0.0.1:9000 --profile 4g [--trace FILE]
    tierflow link set edge-cloud 3g          # a running `tierflow up`, through its API

Clients connect to ``--listen``; every connection is passed on to
``--upstream`` through an emulated link (bandwidth, RTT, jitter, loss,
outages). It prints what it shapes, then one status line per ``--interval``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tierflow.cli._common import StopSignals
from tierflow.transport.linkemu import LinkEmulator, LinkStats, parse_address
from tierflow.transport.profiles import load_trace
from tierflow.types.links import PROFILES, format_bps, get_profile


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _status(elapsed: float, dt: float, now: LinkStats, before: LinkStats) -> str:
    down = (now.down.bytes - before.down.bytes) * 8 / dt if dt > 0 else 0.0
    up = (now.up.bytes - before.up.bytes) * 8 / dt if dt > 0 else 0.0
    lost = now.up.lost_packets + now.down.lost_packets
    return (
        f"[{elapsed:7.1f}s] {now.profile.name}  down {format_bps(down) if down else '0'} "
        f"({_size(now.down.bytes)})  up {format_bps(up) if up else '0'} ({_size(now.up.bytes)})  "
        f"connections {now.active} open / {now.connections} total  packets lost {lost}"
    )


link_app = typer.Typer(
    invoke_without_command=True,
    help="Emulate a link between two tiers, or change a running deployment's (`tierflow link set`).",
)


@link_app.command("set")
def set_link(
    name: str = typer.Argument(help="device-edge, device-cloud or edge-cloud."),
    profile: str = typer.Argument(help=f"A named profile: {', '.join(PROFILES)}."),
    url: str | None = typer.Option(None, "--url", help="The entry point (default: $TIERFLOW_URL)."),
    api_key: str | None = typer.Option(None, "--api-key", help="API key (default: $TIERFLOW_API_KEY)."),
) -> None:
    """Change a link of a running local deployment live (the dashboard's control, from a shell)."""
    from tierflow.cli.generate import make_client

    with make_client(url, api_key) as client:
        links = client.set_link(name, profile)["links"]
    shown = links[name]
    typer.echo(f"{name}: {shown['profile']} ({shown['down_mbps']:g}/{shown['up_mbps']:g} Mbit/s, "
               f"RTT {shown['rtt_ms']:g} ms)")


@link_app.callback()
def link(
    ctx: typer.Context,
    upstream: str | None = typer.Option(
        None, "--upstream", "-u", help="Where connections go: HOST:PORT (the upstream tier)."
    ),
    listen: str = typer.Option(
        "127.0.0.1:0", "--listen", "-l", help="Where clients connect: HOST:PORT (port 0 picks a free one)."
    ),
    profile: str = typer.Option("4g", "--profile", "-p", help=f"Named link profile: {', '.join(PROFILES)}."),
    trace: Annotated[
        Path | None,
        typer.Option(
            "--trace", help="CSV trace (time_s,down_mbps,up_mbps,rtt_ms,loss) replayed over the profile."
        ),
    ] = None,
    loop: bool = typer.Option(
        False, "--loop/--hold", help="At the end of the trace start over, or hold its last row (default)."
    ),
    bandwidth_scale: float = typer.Option(1.0, "--bandwidth-scale", min=0.0, help="Multiply the bandwidths."),
    rtt_scale: float = typer.Option(1.0, "--rtt-scale", min=0.0, help="Multiply RTT and jitter."),
    loss: float | None = typer.Option(
        None, "--loss", min=0.0, max=0.99, help="Per-packet loss probability instead of the profile's."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed for jitter and loss (reproducible runs)."),
    interval: float = typer.Option(1.0, "--interval", min=0.0, help="Seconds per status line (0: none)."),
    duration: float | None = typer.Option(
        None, "--duration", min=0.0, help="Stop after this many seconds (default: until Ctrl-C)."
    ),
    list_profiles: bool = typer.Option(False, "--list", help="List the named profiles and exit."),
) -> None:
    """Emulate a network link (bandwidth, RTT, jitter, loss, outages) between two tiers."""
    if ctx.invoked_subcommand is not None:
        return
    if list_profiles:
        for p in PROFILES.values():
            typer.echo(p.describe())
        return
    if upstream is None:
        raise typer.BadParameter("the upstream tier's HOST:PORT is required", param_hint="--upstream")
    up_addr, listen_addr = parse_address(upstream), parse_address(listen)
    base = get_profile(profile).scaled(bandwidth=bandwidth_scale, rtt=rtt_scale)
    if loss is not None:
        base = base.replace(loss=loss)
    link_trace = load_trace(trace, loop=loop) if trace is not None else None

    emulator = LinkEmulator(up_addr, base, listen=listen_addr, seed=seed, trace=link_trace)
    with StopSignals() as stop:  # Ctrl-C or SIGTERM, even when started with SIGINT ignored
        emulator.start()
        t0 = time.monotonic()
        try:
            host, port = emulator.address
            typer.echo(f"link {host}:{port} -> {up_addr[0]}:{up_addr[1]}")
            if link_trace is not None and trace is not None:
                pts = link_trace.points
                end = "then start over" if loop else "then hold the last row"
                typer.echo(
                    f"trace {trace}: {len(pts)} rows over {pts[-1].time_s:g} s, {end}; "
                    f"jitter from {base.name}"
                )
            typer.echo(f"profile {emulator.profile.describe()}")
            t0 = last_t = time.monotonic()
            last = emulator.stats()
            shown = last.profile
            while duration is None or time.monotonic() - t0 < duration:
                step = interval if interval > 0 else 0.2
                if duration is not None:
                    step = min(step, max(0.0, t0 + duration - time.monotonic()))
                if stop.wait(step):
                    break
                now_t, now = time.monotonic(), emulator.stats()
                if now.profile != shown:
                    shown = now.profile
                    typer.echo(f"profile {shown.describe()}")
                if interval > 0 and now_t - last_t >= interval * 0.99:
                    typer.echo(_status(now_t - t0, now_t - last_t, now, last))
                    last_t, last = now_t, now
        finally:
            final = emulator.stats()
            emulator.stop()
    lost = final.up.lost_packets + final.down.lost_packets
    typer.echo(
        f"stopped after {time.monotonic() - t0:.1f} s: down {_size(final.down.bytes)}, "
        f"up {_size(final.up.bytes)}, {final.connections} connections, {lost} packets lost"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(link_app, name="link")
