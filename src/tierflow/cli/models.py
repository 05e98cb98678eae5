"""``tierflow models``: the bundled models, their paths and sizes."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from tierflow.cli._common import print_table, spinner
from tierflow.model.registry import BUNDLED


def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the bundled models (demo-lm, demo-image, random-image, demo-vision) with their paths and sizes."""
    rows: list[dict[str, Any]] = []
    with spinner("preparing bundled models"):
        for m in BUNDLED.values():
            path = m.ensure()
            rows.append(
                {
                    "name": m.name,
                    "kind": m.kind,
                    "path": str(path),
                    "size_bytes": path.stat().st_size,
                    "description": m.description,
                }
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "kind", "size", "path", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], f"{r['size_bytes'] / 1e6:.1f} MB", r["path"], r["description"])
    print_table(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models)
