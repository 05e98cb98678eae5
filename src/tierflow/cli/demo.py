"""``tierflow demo``: the main job a new user runs first.

For now it runs the bundled models locally: the language model writes a
continuation, the image generator paints a picture. (It grows into a local
device + edge + cloud deployment as the tier nodes land.)
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


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
