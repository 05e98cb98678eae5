"""The three scenarios of examples/, each run as a user runs it: a script against a running `tierflow up`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import tierflow_up

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tierflow_home: Path) -> Iterator[dict[str, str]]:
    """The environment a user's shell has once `tierflow up` runs: its URL and key."""
    root = tmp_path_factory.mktemp("examples")
    base = {**os.environ, "OMP_NUM_THREADS": "1", "TIERFLOW_HOME": str(tierflow_home)}
    args = ["demo-lm", "--port", "0", "--certs", str(root / "pki"), "--profile", "wifi",
            "--store", str(root / "contexts.sqlite")]
    with tierflow_up(args, base) as (info, _process):
        yield {**base, "TIERFLOW_URL": str(info["api"]), "TIERFLOW_API_KEY": str(info["api_key"]),
               "TIERFLOW_EXAMPLE_OUT": str(root / "out")}


def run(script: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_in_car_edits_at_the_edge_goes_to_the_cloud_for_hd_and_works_without_it(env: dict[str, str]) -> None:
    out = run("in_car.py", env)
    assert "in-car scenario: ok" in out
    assert "edit-hd: 2048 px on the cloud" in out
    offline = out.split("edit-cloud-offline: ")[1].splitlines()[0]
    assert offline.startswith("512 px on the") and "cloud" not in offline.split(" in ")[0]


def test_inspection_closes_most_frames_at_the_edge_and_writes_notes(env: dict[str, str]) -> None:
    out = run("inspection.py", env, "24", "--notes", "1")
    assert "inspection scenario: ok" in out
    assert out.count("frame ") == 24
    assert "edge LM" in out  # a crack was found and its note written
    share = float(out.split("closed at the edge: ")[1].split("%")[0])
    assert share >= 70.0, out


def test_mobile_creation_makes_a_larger_clip_on_the_better_link(env: dict[str, str]) -> None:
    out = run("mobile_creation.py", env)
    assert "mobile-creation scenario: ok" in out
    assert "clip-2g:" in out and "clip-wifi:" in out
    auth = {"Authorization": f"Bearer {env['TIERFLOW_API_KEY']}"}
    matrix = httpx.get(f"{env['TIERFLOW_URL']}/routing/matrix", headers=auth, timeout=30).json()
    clips = matrix["tasks"]["clip"]
    assert sum(cell["count"] for cell in clips.values()) >= 2  # the matrix learned from both clips
