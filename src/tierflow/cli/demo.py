"""``tierflow demo``: the main job a new user runs first.

It runs the bundled models on this machine: the language model writes a
continuation, the image generator paints a picture; then it starts a local edge
and cloud (two node processes behind SIMULATED links) and runs the vision model
split across device, edge and cloud over mutual TLS with encrypted tensors.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tierflow.cli._common import console, spinner
from tierflow.model.registry import resolve_model
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.providers import short_name

DEFAULT_PROMPT = "The with statement is used to"


def demo(
    prompt: str = typer.Option(DEFAULT_PROMPT, "--prompt", "-p", help="Prompt for the language model."),
    image_prompt: str = typer.Option("a red car in a tunnel", "--image-prompt", help="Prompt for the image."),
    out: Path = typer.Option(Path("tierflow-demo.png"), "--out", "-o", help="Where to write the image."),
    max_tokens: int = typer.Option(60, "--max-tokens", "-n", min=1),
    tiers: bool = typer.Option(
        True, "--tiers/--no-tiers", help="Also run a split across local edge + cloud nodes."
    ),
    profile: str = typer.Option("wifi", "--profile", help="SIMULATED access link for the three-tier part."),
) -> None:
    """Generate text with demo-lm and an image with demo-image, on this machine's best execution provider."""
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
    from tierflow.runtime.image import ImageGenerator

    with spinner("loading demo-image"):
        generator = ImageGenerator.open(resolve_model("demo-image"))
    with spinner(f"painting '{image_prompt}' at 256 px"):
        image = generator.generate(image_prompt, resolution=256, seed=0)
    image.save(out)
    console.print(
        f"[dim]{short_name(image.provider)}: {image.width}x{image.height} "
        f"in {image.elapsed_s:.2f}s -> {out}[/]"
    )

    if tiers:
        _three_tiers(profile)


def _three_tiers(profile: str) -> None:
    """demo-vision split device -> edge -> cloud through a local deployment (a fixed, documented plan)."""
    import asyncio
    import tempfile

    import numpy as np
    import onnx

    from tierflow.engine.split_runner import SplitPlan, SplitResult, SplitRunner
    from tierflow.node.deploy import deploy_local
    from tierflow.runtime.session import SessionOptions
    from tierflow.runtime.stages import StageRunner
    from tierflow.transport.tls import load_identity

    console.rule(f"[bold]three tiers[/]: demo-vision split device -> edge -> cloud, simulated {profile} link")
    plan = SplitPlan(
        stages=(("device", ("stem/out",)), ("edge", ("inc2/out",)), ("cloud", ("logits",))),
        returns=("logits",),
    )
    model_path = resolve_model("demo-vision")
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "pki"
        with spinner("starting the edge and cloud node processes"):
            deployment = deploy_local(model_path, certs, profile)
        try:
            model = onnx.load(str(model_path))
            image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
            runner = SplitRunner(
                model,
                load_identity(certs, "device"),
                {"edge": deployment.links["device->edge"].hostport},
                SessionOptions(intra_op_threads=1),
                quant="int8",
            )

            async def go() -> SplitResult:
                try:
                    await runner.run({"image": image}, plan)  # warm up sessions and streams
                    return await runner.run({"image": image}, plan)
                finally:
                    await runner.close()

            result = asyncio.run(go())
        finally:
            deployment.stop()
    local = StageRunner(model, SessionOptions(intra_op_threads=1)).run({"image": image}, ["logits"])["logits"]
    split = result.outputs["logits"]
    same = int(np.argmax(split)) == int(np.argmax(local))
    times = {"device": result.device_s, **result.remote_compute_s}
    console.print(
        "[dim]"
        + ", ".join(f"{tier} {seconds * 1000:.1f} ms" for tier, seconds in times.items())
        + f", network {result.network_s * 1000:.1f} ms; int8 frames, AES-256-GCM over mTLS; "
        + f"top-1 class {'matches' if same else 'differs from'} the unsplit model "
        + f"(max |diff| {float(np.abs(split - local).max()):.3f})[/]",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
