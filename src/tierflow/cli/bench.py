"""``tierflow bench ...``: reproducible measurements, each a side-by-side ratio from one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tierflow.cli._common import console, spinner

bench_app = typer.Typer(
    help="Measure tierflow: transport, pipeline, split, generate, migrate, route, images.",
    no_args_is_help=True,
)


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
    model: str = typer.Option(
        "demo-vision", "--model", help="Bundled model to split (demo-vision, random-image)."
    ),
    remote_slowdown: float = typer.Option(
        1.0,
        "--remote-slowdown",
        min=1.0,
        help="SIMULATED slower remote node (its --slowdown).",
    ),
) -> None:
    """A split model over a real remote node and the link emulator: sequential vs overlapped."""
    from tierflow.bench.pipeline import run_pipeline_bench

    with spinner("running the pipeline benchmark"):
        result = run_pipeline_bench(
            [p.strip() for p in profiles.split(",") if p.strip()],
            requests,
            threads,
            device_slowdown,
            model,
            remote_slowdown=remote_slowdown,
        )
    rows = [{"profile": name, **figures} for name, figures in result["profiles"].items()]
    _print(result, as_json, rows, f"pipelined split of {result['model']}")


@bench_app.command("split")
def split(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        help="Repeatable (or comma separated): a bundled model (demo-vision, random-image, demo-lm), a paper "
        "network (alexnet, resnet18, mobilenetv2; built once with torch), an .onnx file or a .tfm package; "
        "'all' = the bundled models, 'paper' = the paper networks. Default: all.",
    ),
    profiles: str = typer.Option(
        "2g,3g,4g,wifi,5g,datacenter", "--profiles", help="Access link profiles, comma separated."
    ),
    device_slowdown: float = typer.Option(
        4.0, "--device-slowdown", min=1.0, help="SIMULATED weaker device (learned by profiling)."
    ),
    edge_slowdown: float = typer.Option(2.0, "--edge-slowdown", min=1.0, help="Edge node --slowdown."),
    cloud_slowdown: float = typer.Option(1.0, "--cloud-slowdown", min=1.0, help="Cloud node --slowdown."),
    requests: int = typer.Option(3, "--requests", min=1, help="Requests per plan (median)."),
    max_plans: int = typer.Option(72, "--max-plans", min=4, help="Grid plans measured at most (sampled)."),
) -> None:
    """The planner's chosen split vs every candidate plan, device-only, edge-only and cloud-only."""
    from rich.markup import escape

    from tierflow.bench.paper_models import PAPER_MODELS
    from tierflow.bench.split import MODELS, Settings, run_split_bench
    from tierflow.cli._common import err_console

    groups = {"all": list(MODELS), "paper": list(PAPER_MODELS)}
    models: list[str] = []
    for item in model or ["all"]:
        for name in (m.strip() for m in item.split(",")):
            if name:
                models += groups.get(name, [name])
    models = list(dict.fromkeys(models))  # each model once, in the order given
    settings = Settings(
        requests=requests,
        device_slowdown=device_slowdown,
        edge_slowdown=edge_slowdown,
        cloud_slowdown=cloud_slowdown,
        max_plans=max_plans,
    )
    result = run_split_bench(
        models,
        [p.strip() for p in profiles.split(",") if p.strip()],
        settings,
        log=lambda line: err_console.print(line, style="dim", highlight=False, markup=False, soft_wrap=True),
    )
    keys = (
        "chosen",
        "chosen_ms",
        "oracle_ms",
        "device_only_ms",
        "edge_only_ms",
        "cloud_only_ms",
        "chosen_over_oracle",
        "speedup_vs_cloud_only",
        "speedup_vs_device_only",
        "speedup_vs_best_single_tier",
        "energy_vs_device_only",
    )
    rows = [
        {"model": name, "profile": access, **{k: figures[k] for k in keys}}
        for name, per in result["models"].items()
        for access, figures in per["profiles"].items()
    ]
    for row in rows:
        row["chosen"] = escape(row["chosen"])  # "device[stem..head]" is not rich markup
    _print(result, as_json, rows, "chosen split vs measured alternatives (ms)")
    if not as_json:
        console.print(result["summary"])


@bench_app.command("generate")
def generate(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    profiles: str = typer.Option(
        "loopback,wifi,4g", "--profiles", help="Access link profiles, comma separated ('loopback': none)."
    ),
    large: str | None = typer.Option(
        "8x512",
        "--large",
        help="Also a random-init Llama of this shape (8x512, 24x1024; needs the export "
        "extra); '' for demo-lm only.",
    ),
    tokens: int = typer.Option(64, "--tokens", min=2, help="Tokens decoded per run."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per placement (median)."),
    llamacpp: Path | None = typer.Option(
        None,
        "--llamacpp",
        help="The work folder of bench/anchors/llamacpp/measure.sh: over loopback, llama.cpp's "
        "one process and RPC split of the Llama shape run between tierflow's runs.",
    ),
    lane_poll_ms: float | None = typer.Option(
        None,
        "--lane-poll-ms",
        min=0,
        max=1000,
        help="The decode lanes' polling limit on every tier (default: the nodes' default; 0: off).",
    ),
) -> None:
    """Tokens/s and time to first token: device-only, edge-only, cloud-only and the three-tier split."""
    from tierflow.bench.generate import PLACEMENTS, default_models, run_generate_bench
    from tierflow.bench.llamacpp import LlamaCpp
    from tierflow.cli._common import err_console
    from tierflow.errors import ConfigError

    anchor = None
    if llamacpp is not None:
        if not large or "loopback" not in profiles.split(","):
            raise ConfigError("--llamacpp needs a Llama shape (--large) and the loopback profile")
        anchor = LlamaCpp.find(llamacpp, (large,))
    with spinner("preparing the models"):
        models = default_models(large or None)
    result = run_generate_bench(
        models,
        [p.strip() for p in profiles.split(",") if p.strip()],
        tokens=tokens,
        repeats=repeats,
        on_stage=lambda line: err_console.print(line, style="dim", highlight=False, markup=False),
        llamacpp=anchor,
        lane_poll_ms=lane_poll_ms,
    )
    rows = [
        {
            "model": name,
            "profile": profile,
            "placement": placement,
            "tok/s": figures.get("tokens_per_s", "infeasible"),
            "ttft_s": figures.get("ttft_s", ""),
            "bound tok/s": figures.get("bound_tokens_per_s", ""),
            "efficiency": figures.get("efficiency", ""),
        }
        for name, per in result["models"].items()
        for profile, placements in per.items()
        if isinstance(placements, dict)
        for placement, figures in placements.items()
        if placement in PLACEMENTS
    ]
    _print(result, as_json, rows, "generation across tiers")
    if not as_json:
        for name, per in result["models"].items():
            if "split_over_local" in per:
                console.print(f"{name}: split over loopback / one process = {per['split_over_local']}")
            if "llamacpp_split_over_local" in per:
                console.print(f"{name}: llama.cpp's, in the same run = {per['llamacpp_split_over_local']}")


@bench_app.command("migrate")
def migrate(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    profiles: str = typer.Option("wifi,4g,5g", "--profiles", help="Access link profiles, comma separated."),
    context_tokens: int = typer.Option(192, "--context-tokens", min=8, help="Tokens of KV per context."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Migrations per profile (median)."),
) -> None:
    """Moving a context's KV shard between tiers: bytes, time, and the time over its link bound."""
    from tierflow.bench.migrate import run_migrate_bench
    from tierflow.cli._common import err_console

    result = run_migrate_bench(
        [p.strip() for p in profiles.split(",") if p.strip()],
        context_tokens=context_tokens,
        repeats=repeats,
        on_stage=lambda line: err_console.print(line, style="dim", highlight=False, markup=False),
    )
    rows = [{"profile": name, **figures} for name, figures in result["profiles"].items()]
    _print(result, as_json, rows, "KV migration vs its link bound")


@bench_app.command("route")
def route(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (without the per-request log)."),
    trace: str = typer.Option(
        "wifi,4g:metered,3g,offline,wifi,4g:metered,3g,offline",
        "--trace",
        help="SIMULATED access network per segment, PROFILE[:metered], comma separated.",
    ),
    per_segment: int = typer.Option(4, "--requests-per-segment", min=1, help="Requests in each segment."),
    device_slowdown: float = typer.Option(4.0, "--device-slowdown", min=1.0, help="SIMULATED slower phone."),
    edge_slowdown: float = typer.Option(2.0, "--edge-slowdown", min=1.0, help="SIMULATED slower edge box."),
    log: str | None = typer.Option(None, "--log", help="Write every request's outcome per policy (JSON)."),
    prefer: str | None = typer.Option(
        None, "--prefer", help="What every request prefers, for every policy (default: the mix's own)."
    ),
    large: str | None = typer.Option(
        None, "--large", help="Serve a random-init Llama of this shape (8x512, 24x1024) instead of demo-lm."
    ),
) -> None:
    """The router against always-device/edge/cloud and a hindsight oracle over a network and battery trace."""
    from tierflow.bench.route import Segment, run_route_bench
    from tierflow.cli._common import err_console

    result = run_route_bench(
        [Segment.parse(s) for s in trace.split(",") if s.strip()],
        requests_per_segment=per_segment,
        device_slowdown=device_slowdown,
        edge_slowdown=edge_slowdown,
        prefer=prefer,
        large=large,
        on_stage=lambda line: err_console.print(line, style="dim", highlight=False, markup=False),
    )
    requests_log = result.pop("requests_log")
    if log:
        with open(log, "w") as f:
            json.dump(requests_log, f, indent=1)
    keys = ("sla_met_rate", "mean_quality", "device_energy_j", "failed_requests", "failed_where_offline_ok")
    rows = [{"policy": name, **{k: figures[k] for k in keys}} for name, figures in result["policies"].items()]
    _print(result, as_json, rows, "routing over a network and battery trace")
    if not as_json:
        console.print_json(json.dumps(result["targets"]))


@bench_app.command("images")
def images(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    package: str | None = typer.Option(None, "--package", help="A demo-image .tfm (default: compile one)."),
    prompts: int = typer.Option(48, "--prompts", min=4, help="Prompts per target and resolution."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed images per level (median)."),
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads."),
) -> None:
    """demo-image's pyramid: adherence, seconds and MACs per target and resolution; the refiner; edits."""
    from pathlib import Path

    from tierflow.bench.images import run_images_bench
    from tierflow.cli._common import err_console

    result = run_images_bench(
        Path(package) if package else None, prompts=prompts, repeats=repeats, threads=threads,
        on_stage=lambda line: err_console.print(line, style="dim", highlight=False, markup=False),
    )
    rows = [
        {"target": name, "level": key, **fig["adherence"], "seconds": fig["seconds"], "GMAC": fig["gmacs"]}
        for name, per in result["targets"].items()
        for key, fig in per["levels"].items()
    ]
    _print(result, as_json, rows, f"demo-image adherence over {result['prompts']} prompts")
    if not as_json:
        for key in ("reference_adherence", "parameters", "super_resolution", "edits"):
            console.print(key, result.get(key))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
