"""``tierflow inspect``: what a ``.tfm`` package holds -- manifest, targets, sizes, hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tierflow.cli._common import console, print_table
from tierflow.cli.compile import human_bytes
from tierflow.model.package import Package, summary


def inspect(
    package: Annotated[Path, typer.Argument(help="A unified model package (.tfm).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON (targets keyed by name).")
    ] = False,
) -> None:
    """Show MODEL.tfm's manifest, its targets, their sizes and SHA-256 hashes (every hash is checked)."""
    pkg = Package.open(package)
    pkg.verify()  # a missing or modified artifact is an error here too
    if as_json:
        typer.echo(json.dumps(summary(pkg), indent=2))
        return
    m = pkg.manifest
    info = m.model
    console.print(
        f"[bold]{info.name}[/] ({info.kind})  package {human_bytes(pkg.size_bytes)}  "
        f"manifest v{m.version}  {m.created_by}",
        highlight=False,
    )
    source = f"source sha256 {info.source_sha256} ({human_bytes(info.source_size_bytes)})"
    console.print(source, highlight=False)
    groups = Table("layer group", "components", "parameters")
    for label, group in (("base", m.base), ("edge_layers", m.edge_layers), ("cloud_layers", m.cloud_layers)):
        groups.add_row(label, compact(group.components) or "-", f"{group.parameters:,}")
    print_table(groups)
    table = Table("target", "device", "precision", "layers", "limit", "size", "sha256", "fidelity")
    for name, t in m.targets.items():
        limit = "-"
        if t.max_seq_len:
            limit = f"{t.max_seq_len} tokens"
        elif t.max_resolution:
            limit = f"{t.max_resolution} px"
        fidelity = ", ".join(f"{k}={v:.4g}" for k, v in t.fidelity.items() if k in _SHOWN) or "-"
        table.add_row(
            name,
            t.device_class,
            t.precision,
            compact(t.layers),
            limit,
            human_bytes(t.size_bytes),
            t.sha256[:16] + "…",
            fidelity,
        )
    print_table(table)


_SHOWN = ("top1", "top1_vs_full", "ppl_ratio", "psnr_db", "max_abs_error")


def compact(components: list[str]) -> str:
    """``layers.0..5`` in place of six names; other components keep their order."""
    layers = [int(c[7:]) for c in components if c.startswith("layers.") and c[7:].isdigit()]
    if len(layers) <= 2:
        return ", ".join(components)
    out: list[str] = []
    for c in components:
        if c.startswith("layers.") and c[7:].isdigit():
            if not any(o.startswith("layers.") for o in out):
                out.append(f"layers.{min(layers)}..{max(layers)}")
        else:
            out.append(c)
    return ", ".join(out)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
