"""``tierflow run`` for models that are not language models.

An image generator (``demo-image`` or anything with its contract) paints the
prompt into a PNG; any other model (``demo-vision``, a foreign ONNX file) runs
once on the given ``--input NAME=FILE.npy`` arrays and generated ones for the
rest, and its outputs are summarised in a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort
from rich.table import Table

from tierflow.cli._common import console, err_console, print_table, spinner
from tierflow.model.registry import BUNDLED
from tierflow.runtime.generic import GenericRunner, TensorSummary, load_npy_inputs
from tierflow.runtime.image import ImageResult, is_image_generator
from tierflow.runtime.providers import short_name
from tierflow.runtime.text_to_image import AnyImageGenerator, open_generator


def run_non_text(
    session: ort.InferenceSession,
    path: Path,
    *,
    prompt: str | None,
    resolution: int,
    refine: bool,
    seed: int | None,
    out: Path | None,
    inputs: Sequence[str] = (),
) -> None:
    if is_image_generator(session):
        _run_image(open_generator(session, onnx.load(str(path))), path, prompt, resolution, refine, seed, out)
    else:
        if prompt is not None:
            err_console.print("[dim]--prompt is ignored: this model takes no text[/]")
        run_generic(GenericRunner(session), inputs, seed)


def model_label(path: Path) -> str:
    """The bundled name for a bundled model's file, else the file's stem."""
    for model in BUNDLED.values():
        if model.path() == path:
            return model.name
    return path.stem


def _run_image(
    generator: AnyImageGenerator,
    path: Path,
    prompt: str | None,
    resolution: int,
    refine: bool,
    seed: int | None,
    out: Path | None,
) -> None:
    generator.check_resolution(resolution)  # fail before the spinner on a bad value
    target = out if out is not None else Path.cwd() / f"{model_label(path)}-{resolution}.png"
    stage = " + refiner" if refine else ""
    with spinner(f"generating {resolution}x{resolution}{stage}"):
        result = generator.generate(prompt, resolution, refine=refine, seed=seed)
    print_image_result(result, target)


def print_image_result(result: ImageResult, target: Path) -> None:
    """Save the image as PNG at ``target`` and print how it was made."""
    result.save(target)
    console.print(
        f"provider={short_name(result.provider)} resolution={result.width}x{result.height} "
        f"refined={'yes' if result.refined else 'no'} seed={result.seed} time={result.elapsed_s:.2f}s "
        f"-> {target}",
        highlight=False,
        soft_wrap=True,
    )


def run_generic(runner: GenericRunner, inputs: Sequence[str], seed: int | None) -> None:
    """Run any model on given (NAME=FILE.npy) or generated inputs and print a summary table."""
    given = load_npy_inputs(inputs)
    result = runner.run(given, seed=seed if seed is not None else 0)
    table = Table("", "name", "shape", "dtype", "min", "max", "mean")
    for role, rows in (("in", result.inputs), ("out", result.outputs)):
        for s in rows:
            table.add_row(role if role == "out" or s.name not in given else "in (given)", *_cells(s))
    print_table(table)
    line = f"provider={short_name(result.provider)} time={result.elapsed_s * 1000:.1f}ms"
    console.print(line, highlight=False, soft_wrap=True)


def _cells(s: TensorSummary) -> list[str]:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    return [s.name, "x".join(map(str, s.shape)) or "scalar", s.dtype, num(s.min), num(s.max), num(s.mean)]
