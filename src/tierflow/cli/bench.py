"""``tierflow bench ...``: reproducible measurements, each a side-by-side ratio from one run."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from tierflow.cli._common import console, spinner

bench_app = typer.Typer(help="Measure tierflow: transport, pipeline, split.", no_args_is_help=True)


def _print(result: Any, as_json: bool, rows: list[dict[str, Any]], title: str) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if not rows:
        return
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@bench_app.command("transport")
def transport(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    repeats: int = typer.Option(5, "--repeats", min=1),
    rtt_samples: int = typer.Option(2000, "--rtt-samples", min=10),
) -> None:
    """Secure frame throughput vs raw AES-GCM (64 KiB..64 MiB) and loopback round-trip overhead."""
    from tierflow.bench.dataplane import measure_loopback_overhead
    from tierflow.bench.transport import measure_frames

    with spinner("measuring frame throughput"):
        frames = measure_frames(repeats=repeats)
    with spinner("measuring loopback round trips between two processes"):
        rtt = measure_loopback_overhead(rtt_samples)
    result = {"frames": frames, **rtt}
    _print(result, as_json, frames, "secure frames vs AES-GCM (GB/s of original tensor bytes)")
    if not as_json:
        console.print(rtt)


@bench_app.command("pipeline")
def pipeline(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    profiles: str = typer.Option("4g,wifi", "--profiles", help="Link profiles, comma separated."),
    requests: int = typer.Option(24, "--requests", min=4),
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads per tier."),
    device_slowdown: float = typer.Option(
        1.0,
        "--device-slowdown",
        min=1.0,
        help="SIMULATED weaker device (stages take this many times as long).",
    ),
) -> None:
    """A split model over a real remote node and the link emulator: sequential vs overlapped."""
    from tierflow.bench.pipeline import run_pipeline_bench

    with spinner("running the pipeline benchmark"):
        result = run_pipeline_bench(
            [p.strip() for p in profiles.split(",") if p.strip()], requests, threads, device_slowdown
        )
    rows = [{"profile": name, **figures} for name, figures in result["profiles"].items()]
    _print(result, as_json, rows, f"pipelined split of {result['model']}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
