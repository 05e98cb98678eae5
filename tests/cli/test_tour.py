"""`tierflow demo`: the scripted tour against a deployment it starts and stops itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_the_tour_shows_context_images_a_degraded_link_and_a_failover(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "250", "TIERFLOW_HOME": str(tmp_path / "home")}
    env.pop("TIERFLOW_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tierflow", "demo", "--out-dir", str(tmp_path / "out")],
        capture_output=True, timeout=400, env=env,
    )
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "layers device 0-1, edge 2-3, cloud 4-5" in text  # the conversation crossed three tiers
    cached = re.search(r"(\d+) of (\d+) tokens already held as KV", text)
    assert cached and int(cached[1]) > 0, text  # the follow-up reused its context's KV
    made = re.findall(r"made on the (device|edge|cloud) at (\d+) px", text)
    assert len(made) == 2, text
    for name in ("image-wifi.png", "image-3g.png"):
        assert Image.open(tmp_path / "out" / name).size[0] in (256, 512, 1024)
    wifi, slow = int(made[0][1]), int(made[1][1])
    assert slow <= wifi  # over 3g the route never asks for more than over wifi
    failover = text.split("4. a failover", 1)[1].split("the edge is back", 1)[0]
    assert "layers " in failover and "edge" not in failover.split("layers ", 1)[1].split(";")[0]
    assert "the edge is back: layers device 0-1, edge 2-3, cloud 4-5" in text
    assert "'a blue car on a road' (colour of the car: red -> blue), repainted on the" in text  # follow-up
    blue, first = (Image.open(tmp_path / "out" / name) for name in ("image-blue.png", "image-wifi.png"))
    assert blue.size == first.size  # the first image's picture, changed
