"""``tierflow run``: run a model (a file or a bundled name) on the best execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tierflow.cli._common import console, err_console, spinner
from tierflow.model.lm_contract import LMSignature
from tierflow.model.registry import resolve_model
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.providers import short_name
from tierflow.runtime.session import SessionOptions, open_session


def run(
    model: str = typer.Argument(
        ..., help="Model file (.onnx) or bundled name (demo-lm, demo-image, demo-vision)."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", "-p", help="Text prompt (LMs and the image generator)."
    ),
    max_tokens: int = typer.Option(48, "--max-tokens", "-n", min=0, help="New tokens to generate (LMs)."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0 = greedy; > 0 samples."),
    top_k: int = typer.Option(
        0, "--top-k", min=0, help="Sample only from the k most likely tokens (0 = all)."
    ),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling / noise."),
    resolution: int = typer.Option(
        256, "--resolution", "-r", help="Output side in pixels (image generator)."
    ),
    refine: bool = typer.Option(False, "--refine", help="Run the refiner stage (image generator)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the output (PNG for images)."),
    threads: int = typer.Option(0, "--threads", min=0, help="ONNX Runtime intra-op threads (0 = auto)."),
    inputs: list[str] | None = typer.Option(
        None, "--input", "-i", help="NAME=FILE.npy: an input array for a non-LM model (repeatable)."
    ),
    target: Annotated[str | None, typer.Option("--target", help="Target of a .tfm package to run.")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Loader policy YAML (.tfm).")] = None,
) -> None:
    """Run MODEL with ONNX Runtime and print which execution provider ran it and how fast."""
    from tierflow.cli.run_package import is_package, run_package

    config = SamplingConfig(
        max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    if is_package(model):
        run_package(
            model,
            target=target,
            policy=policy,
            prompt=prompt,
            config=config,
            resolution=resolution,
            refine=refine,
            seed=seed,
            out=out,
            threads=threads,
            inputs=inputs or [],
        )
        return
    path = resolve_model(model)
    options = SessionOptions(intra_op_threads=threads)
    with spinner(f"loading {path.name}"):
        session = open_session(path, options)
    names = [i.name for i in session.get_inputs()]
    if LMSignature.is_causal_lm(names):
        _run_lm(CausalLM(session), prompt, config)
        return
    from tierflow.cli import run_other  # image generator and generic models

    run_other.run_non_text(
        session,
        path,
        prompt=prompt,
        resolution=resolution,
        refine=refine,
        seed=seed,
        out=out,
        inputs=inputs or [],
    )


def _run_lm(lm: CausalLM, prompt: str | None, config: SamplingConfig) -> None:
    if prompt is None:
        raise typer.BadParameter("a language model needs --prompt", param_hint="--prompt")
    console.print(prompt, end="", style="bold", highlight=False)
    result = lm.generate(prompt, config, on_text=lambda s: console.print(s, end="", highlight=False))
    console.print()
    err_console.print(
        f"[dim]provider={short_name(result.provider)} prompt_tokens={len(result.prompt_ids)} "
        f"new_tokens={len(result.new_ids)} prefill={result.prefill_s * 1000:.1f}ms "
        f"decode={result.tokens_per_s:.1f} tokens/s[/]",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
