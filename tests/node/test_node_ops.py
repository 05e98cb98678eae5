"""A node in this process: its data plane operations, control plane and typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.tiny_lm import save_tiny_lm
from tierflow.errors import InvalidInputError, ModelNotFoundError
from tierflow.node.config import NodeConfig
from tierflow.node.server import NodeServer
from tierflow.transport.certs import init_pki
from tierflow.transport.messages import ErrorCode, StageRequest
from tierflow.transport.peers import PeerClients
from tierflow.transport.tls import load_identity
from tierflow.types import Tier


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_pki(root / "pki", ["device", "cloud"])
    return root / "pki"


def with_node(
    pki: Path, model: Path, body: Callable[[NodeServer, PeerClients], Awaitable[None]], **config: object
) -> None:
    async def go() -> None:
        node = NodeServer(NodeConfig(tier=Tier.CLOUD, model=str(model), certs=pki, threads=1, **config))
        await node.start()
        peers = PeerClients(load_identity(pki, "device"), {"cloud": node.state.data_plane_address or ""})
        try:
            await body(node, peers)
        finally:
            await peers.close()
            await node.stop()

    asyncio.run(go())


def test_generate_over_the_data_plane_and_http(pki: Path, tmp_path: Path) -> None:
    model = save_tiny_lm(tmp_path / "tiny.onnx")

    async def body(node: NodeServer, peers: PeerClients) -> None:
        reply = await peers.call(
            "cloud", StageRequest("generate", meta={"prompt": "the cat", "max_tokens": 4, "seed": 3})
        )
        assert reply.meta["tier"] == "cloud"
        assert len(str(reply.meta["text"]).split()) == 4
        async with httpx.AsyncClient(base_url=f"http://{node.http_address}") as http:
            response = await http.post("/v1/generate", json={"prompt": "the cat", "max_tokens": 4, "seed": 3})
            assert response.status_code == 200
            assert response.json()["text"] == reply.meta["text"]  # the same defaults, the same seed
            assert (await http.post("/v1/generate", json={"prompt": ""})).status_code == 422
            bad = await http.post(  # a lone surrogate: valid JSON, not encodable text
                "/v1/generate",
                content=b'{"prompt": "the \\udcff"}',
                headers={"content-type": "application/json"},
            )
            assert bad.status_code == 422
            assert bad.json()["detail"][0]["loc"] == ["body", "prompt"]
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            assert "/v1/generate" in (await http.get("/openapi.json")).json()["paths"]
            metrics = (await http.get("/metrics")).text
            assert 'tierflow_node_requests_total{op="generate",status="ok"}' in metrics

    with_node(pki, model, body)


def test_bad_requests_get_typed_errors_and_the_stream_survives(pki: Path, tmp_path: Path) -> None:
    model = save_tiny_lm(tmp_path / "tiny.onnx")
    ids = np.array([[0, 1]], np.int64)
    empty = np.zeros((1, 2, 0, 4), np.float32)
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 2), np.int64)}
    feeds |= {f"past_key_values.{i}.{k}": empty for i in range(2) for k in ("key", "value")}

    async def body(node: NodeServer, peers: PeerClients) -> None:
        with pytest.raises(InvalidInputError, match="tier 'cloud'"):
            await peers.call("cloud", StageRequest("run", inputs=feeds, outputs=["no_such_tensor"]))
        with pytest.raises(InvalidInputError, match="unknown operation"):
            await peers.call("cloud", StageRequest("dance"))
        with pytest.raises(ModelNotFoundError):
            await peers.call(
                "cloud", StageRequest("run", model="0123456789abcdef", inputs=feeds, outputs=["logits"])
            )
        wrong = {**feeds, "input_ids": ids.astype(np.float32)}
        with pytest.raises(InvalidInputError, match="rejected its inputs"):
            await peers.call("cloud", StageRequest("run", inputs=wrong, outputs=["logits"]))
        reply = await peers.call("cloud", StageRequest("run", inputs=feeds, outputs=["logits"]))
        assert reply.outputs["logits"].shape == (1, 2, 16)
        assert reply.meta["compute_s.cloud"] > 0
        counts = node.state.metrics.requests
        assert counts.labels("run", ErrorCode.INVALID_INPUT)._value.get() == 2  # noqa: SLF001

    with_node(pki, model, body)


def test_simulated_slowdown_acts_on_real_stage_time(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tierflow.runtime.stages as stages

    slept: list[float] = []
    real_sleep = stages.time.sleep

    def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(stages.time, "sleep", recording_sleep)
    model = save_tiny_lm(tmp_path / "tiny.onnx")
    ids = np.array([[0, 1]], np.int64)
    empty = np.zeros((1, 2, 0, 4), np.float32)
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 2), np.int64)}
    feeds |= {f"past_key_values.{i}.{k}": empty for i in range(2) for k in ("key", "value")}

    async def body(node: NodeServer, peers: PeerClients) -> None:
        await peers.call("cloud", StageRequest("run", inputs=feeds, outputs=["logits"]))
        stats = node.executor.stats["logits"]
        assert stats.calls == 1
        assert len(slept) == 1 and slept[0] > 0
        # the stage took its real time plus twice that again (factor 3), and that is what was recorded
        assert stats.last_s >= slept[0] * 1.5

    with_node(pki, model, body, slowdown=3.0)


def test_a_second_node_on_a_busy_port_fails_clearly(pki: Path, tmp_path: Path) -> None:
    from tierflow.errors import TransportError

    model = save_tiny_lm(tmp_path / "tiny.onnx")

    async def body(node: NodeServer, _: PeerClients) -> None:
        busy = node.state.data_plane_address or ""
        second = NodeServer(NodeConfig(tier=Tier.CLOUD, model=str(model), certs=pki, threads=1, listen=busy))
        with pytest.raises(TransportError, match="in use"):
            await second.start()

    with_node(pki, model, body)
