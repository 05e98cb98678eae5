"""``tierflow run MODEL.tfm``: run a package through the loader (its policy, or ``--target``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tierflow.cli._common import console, err_console, spinner
from tierflow.cli.run_other import print_image_result, run_generic
from tierflow.engine.load import load
from tierflow.runtime.generic import GenericRunner, load_npy_inputs
from tierflow.runtime.interfaces import GenericModel, ImageModel
from tierflow.runtime.lm import SamplingConfig
from tierflow.runtime.loader import CLOUD_PROXY, TierSession
from tierflow.types import ModelKind


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
    """Run the package on the target the loader picks -- locally, or on the cloud node through the proxy
    (TIERFLOW_CLOUD / TIERFLOW_CERTS; a one-line error without one)."""
    with spinner(f"loading {Path(model).name}"):
        loaded = load(model, policy=policy, target=target, threads=threads)
    err_console.print(f"[dim]{loaded.describe()} -- {loaded.decision}[/]", highlight=False)
    if loaded.kind is ModelKind.CAUSAL_LM:
        from tierflow.cli.run import _run_lm

        _run_lm(loaded, prompt, config)
    elif loaded.kind is ModelKind.IMAGE_GENERATOR:
        _run_image(loaded, model, prompt, resolution, refine, seed, out)
    else:
        if prompt is not None:
            err_console.print("[dim]--prompt is ignored: this model takes no text[/]")
        _run_generic(loaded, inputs, seed)


def _run_image(
    generator: ImageModel,
    model: str,
    prompt: str | None,
    resolution: int,
    refine: bool,
    seed: int | None,
    out: Path | None,
) -> None:
    # without --refine the target decides: the cloud target refines, the others have no refiner
    result = generator.generate(prompt, resolution=resolution, refine=True if refine else None, seed=seed)
    where = "cloud" if generator.target == CLOUD_PROXY else generator.target
    target = out if out is not None else Path.cwd() / f"{Path(model).stem}-{where}-{resolution}.png"
    print_image_result(result, target)


def _run_generic(model: GenericModel, inputs: Sequence[str], seed: int | None) -> None:
    if isinstance(model, TierSession):  # a local target also makes up the inputs not given
        run_generic(GenericRunner(model.session), inputs, seed)
        return
    outputs = model.run(load_npy_inputs(inputs))
    for name, value in outputs.items():
        console.print(f"{name}: {'x'.join(map(str, value.shape))} {value.dtype}", highlight=False)
