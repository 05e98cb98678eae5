"""``tierflow export``: a Hugging Face causal LM -> tierflow's ONNX LM form (extra ``export``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass  # filled in by the exporter
