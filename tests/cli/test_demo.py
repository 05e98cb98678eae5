"""`tierflow demo`, the README's main job: text, an image, and a split across local tiers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_demo_writes_text_an_image_and_runs_three_tiers(tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "tierflow", "demo", "-n", "8", "-o", str(out)],
        capture_output=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
    )
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "tokens/s" in text
    assert Image.open(out).size == (256, 256)
    assert "matches the unsplit model" in text
    assert "edge" in text and "cloud" in text
