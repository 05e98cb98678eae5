"""`tierflow up`: a local edge + cloud deployment behind emulated links, used by a device process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from tierflow.engine.split_runner import SplitPlan, SplitRunner
from tierflow.model.registry import resolve_model
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner
from tierflow.transport.tls import load_identity

pytestmark = pytest.mark.slow


def test_up_serves_a_split_run_until_stopped(tmp_path: Path) -> None:
    certs = tmp_path / "pki"
    argv = [
        sys.executable,
        "-m",
        "tierflow",
        "up",
        "demo-vision",
        "--certs",
        str(certs),
        "--profile",
        "wifi",
        "--duration",
        "120",
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        for node in info["nodes"].values():
            assert httpx.get(f"http://{node['http']}/readyz").json()["status"] == "ready"
        model = onnx.load(str(resolve_model("demo-vision")))
        image = np.random.default_rng(3).normal(size=(1, 3, 224, 224)).astype(np.float32)
        whole = StageRunner(model, SessionOptions(intra_op_threads=1)).run({"image": image}, ["logits"])[
            "logits"
        ]
        plan = SplitPlan(
            stages=(("device", ("stem/out",)), ("edge", ("inc2/out",)), ("cloud", ("logits",))),
            returns=("logits",),
        )

        async def go() -> np.ndarray:
            runner = SplitRunner(
                model,
                load_identity(certs, "device"),
                {"edge": info["device_links"]["device->edge"]},
                SessionOptions(intra_op_threads=1),
            )
            try:
                return (await runner.run({"image": image}, plan)).outputs["logits"]
            finally:
                await runner.close()

        np.testing.assert_allclose(asyncio.run(go()), whole, rtol=1e-5, atol=1e-5)
    finally:
        process.terminate()
        process.wait(30)
    with pytest.raises(httpx.TransportError):  # the nodes went down with it
        httpx.get(f"http://{info['nodes']['edge']['http']}/healthz", timeout=2)


def test_up_with_an_unknown_profile_is_a_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierflow",
            "up",
            "demo-vision",
            "--certs",
            str(tmp_path / "p"),
            "--profile",
            "7g",
        ],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr.decode()
    assert "7g" in proc.stderr.decode()


def test_up_with_spans_that_leave_a_gap_is_a_one_line_error(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tierflow", "up", "demo-lm", "--spans", "device=0-1,edge=3-5"]
    argv += ["--certs", str(tmp_path / "p"), "--store", str(tmp_path / "contexts.sqlite")]
    proc = subprocess.run(
        argv, capture_output=True, timeout=60, env={**os.environ, "TIERFLOW_HOME": str(tmp_path)}
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert "Traceback" not in err
    assert "gap at layer 2" in err
    assert not (tmp_path / "p").exists()  # nothing was started


def test_up_with_a_bad_routing_file_is_a_one_line_error_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text("energy_policy: {metered_avoid: [device]}\n")
    argv = [sys.executable, "-m", "tierflow", "up", "demo-lm", "--routing", str(bad)]
    argv += ["--certs", str(tmp_path / "p"), "--store", str(tmp_path / "contexts.sqlite")]
    proc = subprocess.run(
        argv, capture_output=True, timeout=60, env={**os.environ, "TIERFLOW_HOME": str(tmp_path)}
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert "Traceback" not in err
    assert "the device uses no network" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("detectors", "says"),
    [("edge=demo-lm", "demo-lm is not a crack detector"), ("moon=crack-edge", "no tier 'moon'"),
     ("edge=missing.onnx", "no such model file")],
)
def test_up_refuses_a_detector_that_is_not_one_before_anything_starts(
    tmp_path: Path, detectors: str, says: str
) -> None:
    argv = [sys.executable, "-m", "tierflow", "up", "demo-lm", "--detectors", detectors]
    argv += ["--certs", str(tmp_path / "p"), "--store", str(tmp_path / "contexts.sqlite")]
    proc = subprocess.run(
        argv, capture_output=True, timeout=60, env={**os.environ, "TIERFLOW_HOME": str(tmp_path)}
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert says in err
    assert not (tmp_path / "p").exists()


def test_up_reads_per_link_profiles_and_refuses_bad_ones() -> None:
    from tierflow.cli.up import parse_links
    from tierflow.errors import ConfigError

    links = parse_links(["edge-cloud=3g", "device-cloud=5g"], "wifi")
    assert {name: p.name for name, p in links.items()} == {"edge-cloud": "3g", "device-cloud": "5g"}
    with pytest.raises(ConfigError, match="device-edge, device-cloud, edge-cloud"):
        parse_links(["moon-cloud=3g"], "wifi")
    with pytest.raises(ConfigError, match="7g"):
        parse_links(["edge-cloud=7g"], "wifi")
    with pytest.raises(ConfigError, match="6g"):
        parse_links([], "6g")
