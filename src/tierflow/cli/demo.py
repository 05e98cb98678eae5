"""``tierflow demo``: the main job a new user runs first."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass  # filled in once the bundled models exist
