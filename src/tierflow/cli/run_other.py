"""Running models that are not language models (filled in with the image/vision runners)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from tierflow.errors import UnsupportedModelError


def run_non_text(
    session: ort.InferenceSession,
    path: Path,
    *,
    prompt: str | None,
    resolution: int,
    refine: bool,
    seed: int | None,
    out: Path | None,
) -> None:
    raise UnsupportedModelError(f"{path} is not a language model; other model kinds are not runnable yet")
