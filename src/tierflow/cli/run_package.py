"""``tierflow run MODEL.tfm``: run a package through the loader (its policy, or ``--target``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tierflow.cli._common import err_console, spinner
from tierflow.errors import InvalidInputError
from tierflow.model import lm_contract as lc
from tierflow.runtime.lm import SamplingConfig
from tierflow.runtime.loader import CloudProxy, load


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
        session.generate(prompt)  # raises ProxyUnavailableError until a cloud node is configured
        return
    if session.kind == lc.KIND_CAUSAL_LM:
        from tierflow.cli.run import _run_lm

        assert session.lm is not None
        _run_lm(session.lm, prompt, config)
        return
    cap = session.spec.max_resolution
    if cap is not None and resolution > cap:
        raise InvalidInputError(
            f"target {session.target} makes images up to {cap} px; asked for {resolution}"
        )
    from tierflow.cli import run_other

    label = Path(model).with_name(f"{Path(model).stem}-{session.target}.tfm")
    run_other.run_non_text(
        session.session,
        label,
        prompt=prompt,
        resolution=resolution,
        refine=refine,
        seed=seed,
        out=out,
        inputs=inputs,
    )
