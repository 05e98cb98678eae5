"""``tierflow compile``: one model in, one ``.tfm`` package with every target out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tierflow.cli._common import console, print_table, spinner
from tierflow.compiler.compiler import CompileReport, TargetResult, compile_model
from tierflow.errors import ConfigError, FidelityError
from tierflow.model.pyramid import FidelityFloor, PyramidConfig, load_pyramid


def compile_command(
    model: Annotated[
        str, typer.Argument(help="ONNX file or bundled name (see tierflow models).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The package to write (.tfm).")],
    targets: Annotated[
        str | None,
        typer.Option("--targets", help="Comma-separated targets to build (default: all of the pyramid)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Pyramid config YAML, merged over the default.")
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration", help="LMs: text or a text file; other models: a folder of .npz input feeds."
        ),
    ] = None,
    min_fidelity: Annotated[
        list[str] | None,
        typer.Option(
            "--min-fidelity",
            help="Override a floor: [TARGET:]KEY=VALUE[,KEY=VALUE], KEY one of top1, top1_vs_full, "
            "ppl_ratio, "
            "psnr_db, max_abs_error (repeatable).",
        ),
    ] = None,
) -> None:
    """Compile MODEL into every target of the pyramid (phone INT8, edge FP16, cloud FP32 by default).

    Prints each artifact's size and its fidelity against FP32, measured by running it; refuses to
    write anything when a target falls below its floor.
    """
    cfg = load_pyramid(config)
    for spec in min_fidelity or []:
        target, floor = parse_floor(spec)
        cfg = cfg.with_floor(target, floor)
    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    if targets is not None and not names:
        raise ConfigError("--targets is empty")
    try:
        with spinner(f"compiling {model}"):
            report = compile_model(model, output, config=cfg, targets=names, calibration=calibration)
    except FidelityError as exc:
        if isinstance(exc.report, CompileReport):
            print_report(exc.report, cfg)
        raise
    print_report(report, cfg)


def parse_floor(spec: str) -> tuple[str | None, dict[str, float]]:
    """``"phone:top1=0.9,ppl_ratio=1.1"`` -> ``("phone", {"top1": 0.9, "ppl_ratio": 1.1})``."""
    target: str | None = None
    body = spec
    if ":" in spec.split("=", 1)[0]:
        target, body = spec.split(":", 1)
        target = target.strip()
    values: dict[str, float] = {}
    for part in body.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in FidelityFloor.model_fields:
            keys = ", ".join(FidelityFloor.model_fields)
            raise ConfigError(f"--min-fidelity '{spec}': expected KEY=VALUE with KEY one of {keys}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ConfigError(f"--min-fidelity '{spec}': {raw!r} is not a number") from None
    return target, values


def print_report(report: CompileReport, cfg: PyramidConfig) -> None:
    ratio = report.size_ratio()
    largest = max((t.spec.size_bytes for t in report.targets), default=1)
    table = Table(
        "target",
        "device",
        "precision",
        "layers",
        "size",
        "rel. size",
        "fidelity vs FP32",
        "floor",
        title=f"{report.source} ({report.kind})",
    )
    for t in report.targets:
        floor = "[red]✗ " + ", ".join(t.misses) + "[/]" if t.misses else "[green]ok[/]"
        table.add_row(
            t.name,
            t.spec.device_class,
            f"{t.spec.precision} ({t.method})",
            t.spec.quality.rsplit(",", 1)[0],
            human_bytes(t.spec.size_bytes),
            f"{100 * t.spec.size_bytes / largest:.1f} %",
            fidelity_text(t) + f"\n[dim]{t.check}[/]",
            floor,
        )
    print_table(table)
    if ratio is not None:
        small, large, value = ratio
        console.print(f"{small}/{large} size ratio: {100 * value:.1f} %", highlight=False)
    if report.written:
        size = report.output.stat().st_size
        targets = len(report.targets)
        console.print(f"wrote {report.output} ({human_bytes(size)}, {targets} targets)", highlight=False)


def fidelity_text(t: TargetResult) -> str:
    m = t.spec.fidelity
    if "ppl" in m:
        return (
            f"top1 {m['top1']:.3f} (vs full model {m['top1_vs_full']:.3f})\n"
            f"ppl {m['ppl']:.2f} (own FP32 {m['ppl_fp32']:.2f}, full FP32 {m['ppl_full']:.2f})"
        )
    parts = []
    if "psnr_db" in m:
        parts.append(f"PSNR {m['psnr_db']:.1f} dB")
    if "top1" in m:
        parts.append(f"top1 {m['top1']:.3f}")
    err = m.get("max_abs_error", 0.0)
    parts.append("exact" if err == 0 else f"max abs err {err:.3g}")
    return ", ".join(parts)


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_command)
