"""The control plane's OpenAPI document describes what the API really returns (Schemathesis, every check)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.tiny_lm import save_tiny_lm
from tierflow.node.launch import NodeProcess, start_node
from tierflow.transport.certs import init_pki

pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root = tmp_path_factory.mktemp("openapi")
    init_pki(root / "pki", ["device", "cloud"])
    process = start_node("cloud", save_tiny_lm(root / "tiny.onnx"), root / "pki")
    yield process
    process.stop()


def test_schemathesis_finds_no_violation(node: NodeProcess, tmp_path: Path) -> None:
    # the CLI as a user runs it: every check, every phase (examples, coverage, fuzzing, stateful);
    # one worker and a fixed seed keep it reproducible and within ~20 s on two cores
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
        "run", f"http://{node.http}/openapi.json", "--checks", "all", "--workers", "1", "--seed", "7",
        "--max-examples", "60", "--request-timeout", "20", "--report-dir", str(tmp_path),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_the_document_declares_what_comes_back(node: NodeProcess) -> None:
    base = f"http://{node.http}"
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    # /metrics is Prometheus text, not JSON
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert all(media.startswith("text/plain") for media in metrics)
    assert httpx.get(f"{base}/metrics").headers["content-type"].startswith("text/plain")
    # a 422 is the node's own InvalidRequest body, and says what is wrong
    responses = paths["/v1/generate"]["post"]["responses"]
    declared = responses["422"]["content"]["application/json"]["schema"]["$ref"]
    assert declared.endswith("/InvalidRequestResponse")
    bad = httpx.post(f"{base}/v1/generate", json={"prompt": "the cat", "top_p": 2, "seed": False})
    assert bad.status_code == 422
    body = bad.json()
    assert body["error"] == "InvalidRequest"
    assert {tuple(p["loc"]) for p in body["detail"]} == {("body", "top_p"), ("body", "seed")}
    assert all(p["msg"] for p in body["detail"])
    # a user mistake the schema cannot express is a 400 with a one-line detail
    long = httpx.post(f"{base}/v1/generate", json={"prompt": " ".join(["cat"] * 40)})
    assert long.status_code == 400
    detail = "prompt is 40 tokens; this model's context is 32 tokens"
    assert long.json() == {"error": "InvalidInputError", "detail": detail}
    # FastAPI's own errors have the same shape
    gone = httpx.get(f"{base}/v2/nothing")
    assert gone.status_code == 404 and gone.json()["error"] == "NotFound"
