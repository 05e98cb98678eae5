"""``tierflow run MODEL.tfm``: run a package through the loader (its policy, or ``--target``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from tierflow.cli._common import console, err_console, spinner
from tierflow.cli.run_other import print_image_result, run_generic
from tierflow.engine.load import load
from tierflow.model import lm_contract as lc
from tierflow.runtime.generic import GenericRunner, load_npy_inputs
from tierflow.runtime.image import ImageResult
from tierflow.runtime.lm import SamplingConfig
from tierflow.runtime.loader import CloudProxy, TierSession


def is_package(model: str) -> bool:
    return model.endswith(".tfm")


def run_package(
    model: str,
    *,
    target: str | None,
    policy: Path | None,
    prompt: str | None,
    config: SamplingConfig,
    resolution: int,
    refine: bool,
    seed: int | None,
    out: Path | None,
    threads: int,
    inputs: Sequence[str],
) -> None:
    with spinner(f"loading {Path(model).name}"):
        session = load(model, policy=policy, target=target, threads=threads)
    err_console.print(f"[dim]{session.describe()} -- {session.decision}[/]", highlight=False)
    if isinstance(session, CloudProxy):
        # runs on the cloud node (TIERFLOW_CLOUD / TIERFLOW_CERTS), or a one-line error without one
        _run_remote(session, model, prompt, config, resolution, refine, seed, out, inputs)
        return
    if session.kind == lc.KIND_CAUSAL_LM:
        from tierflow.cli.run import _run_lm

        assert session.lm is not None
        _run_lm(session.lm, prompt, config)
        return
    if session.kind == "image-generator":
        _run_image(session, model, prompt, resolution, refine, seed, out)
    else:
        if prompt is not None:
            err_console.print("[dim]--prompt is ignored: this model takes no text[/]")
        _run_generic(session, inputs, seed)


def _run_remote(
    proxy: CloudProxy,
    model: str,
    prompt: str | None,
    config: SamplingConfig,
    resolution: int,
    refine: bool,
    seed: int | None,
    out: Path | None,
    inputs: Sequence[str],
) -> None:
    if proxy.kind == lc.KIND_CAUSAL_LM:
        if prompt is None:
            raise typer.BadParameter("a language model needs --prompt", param_hint="--prompt")
        text = proxy.generate(
            prompt, max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
            top_p=config.top_p, seed=config.seed,
        )
        assert not isinstance(text, ImageResult)
        console.print(f"[bold]{prompt}[/]{text.text}", highlight=False)
        err_console.print(f"[dim]provider={text.provider} new_tokens={len(text.new_ids)}[/]", highlight=False)
        return
    if proxy.kind == "image-generator":
        image = proxy.generate(prompt, resolution=resolution, refine=refine, seed=seed)
        assert isinstance(image, ImageResult)
        target = out if out is not None else Path.cwd() / f"{Path(model).stem}-cloud-{resolution}.png"
        print_image_result(image, target)
        return
    outputs = proxy.run(load_npy_inputs(inputs))
    for name, value in outputs.items():
        console.print(f"{name}: {'x'.join(map(str, value.shape))} {value.dtype}", highlight=False)


def _run_image(
    session: TierSession,
    model: str,
    prompt: str | None,
    resolution: int,
    refine: bool,
    seed: int | None,
    out: Path | None,
) -> None:
    # without --refine the target decides: the cloud target refines, the others have no refiner
    result = session.generate(prompt, resolution=resolution, refine=True if refine else None, seed=seed)
    assert isinstance(result, ImageResult)
    target = out if out is not None else Path.cwd() / f"{Path(model).stem}-{session.target}-{resolution}.png"
    print_image_result(result, target)


def _run_generic(session: TierSession, inputs: Sequence[str], seed: int | None) -> None:
    run_generic(GenericRunner(session.session), inputs, seed)
