"""``tierflow run``: run a model (a file or a bundled name) on the best execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tierflow.cli._common import console, err_console, spinner
from tierflow.model.lm_contract import LMSignature
from tierflow.model.registry import resolve_model
from tierflow.runtime.diffusion import MANIFEST, DiffusionPipeline
from tierflow.runtime.interfaces import TextModel
from tierflow.runtime.lm import CausalLM, SamplingConfig, sampling_config
from tierflow.runtime.providers import short_name
from tierflow.runtime.session import SessionOptions, open_session

DEFAULTS = SamplingConfig()  # what the help texts quote


def run(
    model: str = typer.Argument(
        ..., help="Model file (.onnx), bundled name (demo-lm, demo-image, random-image, demo-vision), "
        "package (.tfm) or a diffusers pipeline folder written by `tierflow export`."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", "-p", help="Text prompt (LMs and the image generator)."
    ),
    max_tokens: int = typer.Option(48, "--max-tokens", "-n", min=0, help="New tokens to generate (LMs)."),
    temperature: float | None = typer.Option(
        None,
        "--temperature",
        "-t",
        min=0.0,
        help=f"Sampling temperature (default {DEFAULTS.temperature:g}; 0 = the most likely token).",
    ),
    top_k: int | None = typer.Option(
        None,
        "--top-k",
        min=0,
        help=f"Sample only from the k most likely tokens (default {DEFAULTS.top_k}; 0 = all).",
    ),
    top_p: float | None = typer.Option(
        None, "--top-p", min=0.0, max=1.0, help=f"Nucleus sampling mass (default {DEFAULTS.top_p:g})."
    ),
    repeat_penalty: float | None = typer.Option(
        None,
        "--repeat-penalty",
        min=0.0,
        help=f"Penalty on the last {DEFAULTS.repeat_last_n} tokens (default {DEFAULTS.repeat_penalty:g}; "
        "1 = off; with --greedy: 1).",
    ),
    greedy: bool = typer.Option(
        False, "--greedy", help="Deterministic: always the most likely token, no repetition penalty."
    ),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Random seed for sampling / noise."),
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

    config = sampling_from_options(max_tokens, temperature, top_k, top_p, repeat_penalty, greedy, seed)
    if (Path(model) / MANIFEST).is_file():  # a diffusers pipeline `tierflow export` wrote
        _run_diffusion(Path(model), prompt, resolution, seed, out, threads)
        return
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


def _run_diffusion(
    folder: Path, prompt: str | None, resolution: int, seed: int | None, out: Path | None, threads: int
) -> None:
    from tierflow.cli.run_other import print_image_result

    with spinner(f"loading {folder.name}"):
        pipeline = DiffusionPipeline.open(folder, SessionOptions(intra_op_threads=threads))
    pipeline.check_resolution(resolution)  # fail before the spinner on a bad value
    with spinner(f"generating {resolution}x{resolution}"):
        result = pipeline.generate(prompt or "", seed=seed, resolution=resolution)
    print_image_result(result, out if out is not None else Path.cwd() / f"{folder.name}-{resolution}.png")


def sampling_from_options(
    max_tokens: int,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    repeat_penalty: float | None,
    greedy: bool,
    seed: int | None,
) -> SamplingConfig:
    """The command line's decoding: SamplingConfig's defaults, ``--greedy``, or the options given."""
    if greedy and temperature not in (None, 0):
        raise typer.BadParameter("--greedy means temperature 0; drop one of them", param_hint="--greedy")
    given = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "repeat_penalty": repeat_penalty,
        "seed": seed,
    }
    base = SamplingConfig.greedy(max_tokens) if greedy else SamplingConfig(max_new_tokens=max_tokens)
    return sampling_config(base, {key: value for key, value in given.items() if value is not None})


def _run_lm(lm: CausalLM | TextModel, prompt: str | None, config: SamplingConfig) -> None:
    """Stream a generation to stdout and one line of statistics to stderr (a local LM or a TextModel)."""
    if prompt is None:
        raise typer.BadParameter("a language model needs --prompt", param_hint="--prompt")
    shown = False

    def show(text: str) -> None:  # the prompt goes out with the first text: not at all on an error
        nonlocal shown
        if not shown:
            console.print(prompt, end="", style="bold", highlight=False)
            shown = True
        console.print(text, end="", highlight=False)

    result = lm.generate(prompt, config, on_text=show)
    show("")
    console.print()
    stats = f"provider={short_name(result.provider)}"
    if result.prompt_ids:  # a remote generation reports neither the prompt's tokens nor the prefill
        stats += f" prompt_tokens={len(result.prompt_ids)}"
    stats += f" new_tokens={len(result.new_ids)}"
    if result.prompt_ids:
        stats += f" prefill={result.prefill_s * 1000:.1f}ms"
    err_console.print(f"[dim]{stats} decode={result.tokens_per_s:.1f} tokens/s[/]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
