"""`tierflow demo --vision-split`: text, an image, and a plan the planner chose across local tiers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROW = re.compile(
    r"│ (device-only|edge-only|cloud-only|best 2-tier split|best 3-tier split)\s*│ (\S.*?)\s*│ ([\d.]+)\s*│"
    r" ([\d.]+)x( +<- chosen)?"
)
CHOSEN = re.compile(r"chosen by the planner: (\S.*?) \(([a-z+-]+)\), predicted ([\d.]+) ms")
RUN = re.compile(
    r"^(chosen plan|for comparison[^:]*): (\S.*?) measured ([\d.]+) ms \(predicted ([\d.]+)\): (.*)$",
    re.MULTILINE,
)


def test_demo_runs_the_plan_the_planner_chose_and_checks_it_against_the_unsplit_model(tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "tierflow", "demo", "--vision-split", "-n", "8", "-o", str(out)],
        capture_output=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "250"},
    )
    text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "tokens/s" in text
    assert Image.open(out).size == (256, 256)

    # the planner's predictions for every alternative, and the one it chose: the fastest predicted
    rows = {m[1]: (m[2], float(m[3]), m[5] is not None) for m in ROW.finditer(text)}
    assert {"device-only", "edge-only", "cloud-only", "best 3-tier split"} <= set(rows), text
    chosen = CHOSEN.search(text)
    assert chosen is not None, text
    plan, kind, predicted = chosen[1], chosen[2], float(chosen[3])
    marked = [(p, ms) for p, ms, is_chosen in rows.values() if is_chosen]
    assert marked and marked[0][0] == plan, text  # the row marked chosen is the plan announced
    assert marked[0][1] == pytest.approx(predicted, abs=0.1)
    # exact search: no alternative is predicted faster
    assert predicted <= min(ms for _, ms, _ in rows.values()) + 0.05, text
    assert kind in ("device-only", "edge-only", "cloud-only") or "+" in kind

    # what ran: the chosen plan first, over the real tiers, each run checked against the unsplit model
    runs = RUN.findall(text)
    assert runs and runs[0][0] == "chosen plan" and runs[0][1] == plan, text
    assert float(runs[0][3]) == pytest.approx(predicted, abs=0.1)
    for _, ran, _measured, _predicted, detail in runs:
        assert "top-1 class matches the unsplit model" in detail, (ran, detail)
    # a run that used all three tiers (the chosen plan, or the best three-tier plan beside it)
    three = [detail for _, ran, *_, detail in runs if "edge " in detail and "cloud " in detail]
    assert three, text
