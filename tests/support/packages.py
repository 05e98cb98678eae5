"""Packages compiled from the bundled models, as `tierflow compile` makes them (tests that need targets).

random-image: the phone target makes 256 px, the edge 1024, the cloud 2048 with the refiner.
demo-lm: its phone target is the early-exit INT8 model (layers 0..2 of 6).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def compile_bundled(name: str, path: Path) -> Path:
    """Bundled model ``name`` compiled into every target of the default pyramid, at ``path``."""
    subprocess.run(
        [sys.executable, "-m", "tierflow", "compile", name, "-o", str(path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path
