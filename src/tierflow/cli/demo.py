"""``tierflow demo``: a scripted tour of a running deployment, or the bundled models on this machine.

By default the tour (:mod:`tierflow.cli.tour`): against ``TIERFLOW_URL`` and ``TIERFLOW_API_KEY``,
or a ``tierflow up`` it starts and stops itself -- a conversation with its context, a routed
image, the route following the links as they degrade, a failover. ``--vision-split`` runs the
older walk-through instead: the bundled models on this machine, then demo-vision split across a
local edge and cloud on a plan the planner chose, each run checked against the unsplit model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from tierflow.cli._common import console, spinner
from tierflow.model.registry import resolve_model
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.providers import short_name

if TYPE_CHECKING:
    from tierflow.bench.split import ModelBench
    from tierflow.engine.split_engine import SplitEngine
    from tierflow.planner.plan import Plan

DEFAULT_PROMPT = "The with statement is used to"


def demo(
    vision_split: bool = typer.Option(
        False, "--vision-split", help="The older walk-through: local models, then demo-vision split."
    ),
    out_dir: Path = typer.Option(Path("tierflow-demo"), "--out-dir", help="Where the tour puts its images."),
    prompt: str = typer.Option(DEFAULT_PROMPT, "--prompt", "-p", help="Prompt for the language model."),
    image_prompt: str = typer.Option("a red car in a tunnel", "--image-prompt", help="Prompt for the image."),
    out: Path = typer.Option(Path("tierflow-demo.png"), "--out", "-o", help="Where to write the image."),
    max_tokens: int = typer.Option(60, "--max-tokens", "-n", min=1),
    tiers: bool = typer.Option(
        True, "--tiers/--no-tiers", help="Also run a split across local edge + cloud nodes."
    ),
    profile: str = typer.Option("wifi", "--profile", help="SIMULATED access link for the three-tier part."),
    device_slowdown: float = typer.Option(
        4.0, "--device-slowdown", min=1.0, help="SIMULATED weaker device for the three-tier part."
    ),
    edge_slowdown: float = typer.Option(
        2.0, "--edge-slowdown", min=1.0, help="SIMULATED edge box this many times slower than the cloud."
    ),
) -> None:
    """A tour of a deployment: a conversation, a routed image, a degrading link, a failover."""
    if not vision_split:
        from tierflow.cli import tour

        tour.run(tour.env_url(), os.environ.get("TIERFLOW_API_KEY"), out_dir, profile)
        return
    console.rule("[bold]demo-lm[/]: text generation with the KV cache")
    with spinner("loading demo-lm"):
        lm = CausalLM.open(resolve_model("demo-lm"))
    console.print(prompt, end="", style="bold", highlight=False)
    config = SamplingConfig(max_new_tokens=max_tokens, temperature=0.8, top_k=40, seed=0)
    result = lm.generate(prompt, config, on_text=lambda s: console.print(s, end="", highlight=False))
    console.print()
    console.print(
        f"[dim]{short_name(result.provider)}: {len(result.new_ids)} tokens, "
        f"{result.tokens_per_s:.0f} tokens/s[/]"
    )
    console.rule("[bold]demo-image[/]: image generation")
    from tierflow.runtime.text_to_image import open_file

    with spinner("loading demo-image"):
        generator = open_file(resolve_model("demo-image"))
    with spinner(f"painting '{image_prompt}' at 256 px"):
        image = generator.generate(image_prompt, resolution=256, seed=0)
    image.save(out)
    console.print(
        f"[dim]{short_name(image.provider)}: {image.width}x{image.height} "
        f"in {image.elapsed_s:.2f}s -> {out}[/]"
    )

    if tiers:
        _three_tiers(profile, device_slowdown, edge_slowdown)


def _three_tiers(profile: str, device_slowdown: float, edge_slowdown: float) -> None:
    """demo-vision over a local deployment: the planner profiles the tiers and chooses the plan; the
    chosen plan runs, and -- when the planner kept the work on one tier -- so does the best plan that
    uses all three, for comparison; every run is checked against the unsplit model."""
    import asyncio
    import tempfile

    import onnx

    from tierflow.bench.split import ModelBench, Settings
    from tierflow.node.deploy import deploy_local
    from tierflow.profiling.graph_builder import build_unit_graph
    from tierflow.types.links import get_profile

    access = get_profile(profile)  # a bad name fails before anything starts
    console.rule(
        f"[bold]three tiers[/]: demo-vision over a local edge + cloud, SIMULATED {access.name} link, "
        f"device SIMULATED x{device_slowdown:g} slower"
    )
    model_path = resolve_model("demo-vision")
    proto = onnx.load(str(model_path))
    graph = build_unit_graph(proto)
    settings = Settings(
        device_slowdown=device_slowdown, edge_slowdown=edge_slowdown, profile_rounds=2, calibration_runs=2
    )
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "pki"
        with spinner("starting the edge and cloud node processes"):
            deployment = deploy_local(model_path, certs, access, edge_slowdown=edge_slowdown)
        try:
            bench = ModelBench("demo-vision", proto, graph, deployment, certs, settings, lambda _line: None)

            async def go() -> None:
                with spinner("profiling device, edge and cloud"):
                    engine = await bench.setup()
                try:
                    with spinner(f"planning for the {access.name} link"):
                        chosen = await bench.decide(engine, access)
                    await _report_and_run(bench, engine, chosen)
                finally:
                    await engine.close()

            asyncio.run(go())
        finally:
            deployment.stop()


async def _report_and_run(bench: ModelBench, engine: SplitEngine, chosen: Plan) -> None:
    import numpy as np
    from rich.markup import escape
    from rich.table import Table

    from tierflow.planner.search import candidate_grid
    from tierflow.runtime.session import SessionOptions
    from tierflow.runtime.stages import StageRunner
    from tierflow.types import PlanKind

    snapshot = engine.snapshot()
    grid = candidate_grid(bench.graph, snapshot, include=[chosen])  # every placement, best predicted first
    rows: dict[str, Plan] = {}
    for p in grid:
        kind = p.kind()
        label = str(kind) if kind.single is not None else f"best {len(kind.tiers)}-tier split"
        rows.setdefault(label, p)
    whole = ", ".join(f"{t} {ms:.1f} ms" for t, ms in bench.whole_ms.items())
    console.print(
        f"[dim]measured for the whole model: {whole}; per-hop overhead {bench.overhead_ms()} ms[/]",
        highlight=False,
        soft_wrap=True,
    )
    table = Table("alternative", "plan", "predicted ms", "vs chosen", title="the planner's predictions")
    for label in ("device-only", "edge-only", "cloud-only", "best 2-tier split", "best 3-tier split"):
        alt = rows.get(label)
        if alt is None:
            continue
        latency = alt.prediction.latency_s * 1000.0
        mark = "  <- chosen" if alt.key == chosen.key else ""
        table.add_row(
            label,
            escape(alt.describe()),
            f"{latency:.1f}",
            f"{alt.prediction.latency_s / chosen.prediction.latency_s:.2f}x{mark}",
        )
    console.print(table)
    runner_up = next((p for p in grid if p.key != chosen.key), None)
    why = f"the lowest predicted latency of the {len(grid)} placements (exact search)" + (
        f"; next best {escape(runner_up.describe())} at {runner_up.prediction.latency_s * 1000:.1f} ms"
        if runner_up
        else ""
    )
    console.print(
        f"chosen by the planner: [bold]{escape(chosen.describe())}[/] ({chosen.kind()}), predicted "
        f"{chosen.prediction.latency_s * 1000:.1f} ms: {why}",
        highlight=False,
        soft_wrap=True,
    )
    feeds = dict(bench.feeds)
    local = StageRunner(bench.proto, SessionOptions(intra_op_threads=1)).run(feeds, list(chosen.results))
    runs = [("chosen plan", chosen)]
    three = rows.get("best 3-tier split")
    if chosen.kind() is not PlanKind.DEVICE_EDGE_CLOUD and three is not None:
        runs.append(("for comparison, the best plan on all three tiers (not chosen)", three))
    for title, p in runs:
        await engine.run_plan(dict(feeds), p)  # warm up sessions and streams
        result = await engine.run_plan(dict(feeds), p)
        name = chosen.results[0]
        split, reference = result.outputs[name], local[name]
        same = int(np.argmax(split)) == int(np.argmax(reference))
        times = {"device": result.device_s, **result.remote_compute_s}
        console.print(
            f"[dim]{title}: {escape(p.describe())} measured {result.total_s * 1000:.1f} ms "
            f"(predicted {p.prediction.latency_s * 1000:.1f}): "
            + ", ".join(f"{tier} {seconds * 1000:.1f} ms" for tier, seconds in times.items())
            + f", network {result.network_s * 1000:.1f} ms; int8 frames, AES-256-GCM over mTLS; "
            + f"top-1 class {'matches' if same else 'differs from'} the unsplit model "
            + f"(max |diff| {float(np.abs(split - reference).max()):.3f})[/]",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
