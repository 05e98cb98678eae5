"""Bundled models compiled into packages once, on first use, and kept in the tierflow home.

``tierflow up`` serves each tier its own target of the bundled image generator (the phone's
256 px, the edge's 1024, the cloud's 2048 with the refiner); compiling takes a few seconds, so
the package is built the first time and reused afterwards, rebuilt when the bundled model changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from tierflow.compiler.compiler import compile_model
from tierflow.model.registry import resolve_model


def bundled_package(name: str, home: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The package of bundled model ``name`` under ``home/packages`` (compiled now if missing or stale)."""
    source = resolve_model(name)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    folder = home / "packages"
    path = folder / f"{name}-{digest}.tfm"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(f"compiling {name} into its targets (first run only)")
    partial = path.with_suffix(f".{os.getpid()}.partial")
    compile_model(name, partial)
    partial.replace(path)  # atomic: a concurrent first run never reads half a package
    return path
