"""Packages compiled from the bundled models, as `tierflow compile` makes them (tests that need targets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def compile_demo_image(path: Path) -> Path:
    """demo-image compiled into ``path``: the phone target makes 256 px, the edge 1024, the cloud 2048."""
    subprocess.run(
        [sys.executable, "-m", "tierflow", "compile", "demo-image", "-o", str(path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


def compile_demo_lm(path: Path) -> Path:
    """demo-lm compiled into ``path``: its phone target is the early-exit INT8 model (layers 0..2)."""
    subprocess.run(
        [sys.executable, "-m", "tierflow", "compile", "demo-lm", "-o", str(path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path
