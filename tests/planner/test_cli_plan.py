"""`tierflow plan` from a real subprocess: JSON, the table, remote stats, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def tierflow(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIERFLOW_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tierflow", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


def test_plan_json(home: Path) -> None:
    proc = tierflow(
        home, "plan", "demo-vision", "--profile", "wifi", "--runs", "1", "--device-load", "0", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["granularity"] == "auto" and len(report["units"]) == 9
    assert report["tiers"]["device"]["source"] == "local" and report["tiers"]["cloud"]["source"] == "scaled"
    chosen = report["chosen"]
    assert chosen["exact"] and set(chosen["assignment"]) == {u["name"] for u in report["units"]}
    alts = report["alternatives"]
    assert set(alts) == {"device-only", "edge-only", "cloud-only", "best 2-tier", "best 3-tier"}
    for alt in alts.values():  # latency only (w = 0): nothing beats the exact choice
        assert chosen["latency_ms"] <= alt["latency_ms"] + 1e-9
    assert alts["best 3-tier"]["latency_ms"] == pytest.approx(chosen["latency_ms"])
    assert report["candidate_plans"] >= 45
    # profiles were cached on disk, per model and tier fingerprint
    assert len(list((home / "profiles").glob("*.json"))) >= 2


def test_plan_table_and_remote_stats(home: Path, tmp_path: Path) -> None:
    stats = tmp_path / "cloud.json"
    stats.write_text(json.dumps({"stages": [{"inputs": ["image"], "outputs": ["logits"], "seconds": 2.0}]}))
    proc = tierflow(
        home,
        "plan",
        "demo-vision",
        "--profile",
        "datacenter",
        "--runs",
        "1",
        "--cloud-stats",
        str(stats),
        "--device-load",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "chosen" in out and "predicted latency" in out and "best 3-tier" in out
    assert "reported (1 stage timings)" in out
    assert "2000.00 ms" in out  # the cloud as it reported itself: slow, so not chosen
    assert "chosen: cloud" not in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--profile", "7g"], "unknown link profile '7g'"),
        (["--device-memory", "0.01", "--no-edge", "--no-cloud"], "device has 10.2 KiB"),
        (["--compression", "zip"], "--compression must be"),
        (["--dim", "seq"], "--dim takes SYMBOL=N"),
    ],
)
def test_bad_input_is_one_line(home: Path, args: list[str], fragment: str) -> None:
    proc = tierflow(home, "plan", "demo-vision", "--runs", "1", *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in proc.stderr, proc.stderr
