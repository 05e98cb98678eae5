"""Crack inspection across real nodes (in-process data plane): the edge's detector answers, a hard example
goes to the cloud's, and the edge's answer stands when the cloud cannot be reached."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.support.fake_peers import FakeNetwork
from tierflow.engine.inspection import TieredDetectors
from tierflow.errors import InvalidInputError, ModelNotFoundError, TierUnavailableError
from tierflow.model.registry import resolve_model
from tierflow.model.scenes import parse_prompt, render
from tierflow.runtime.crack_detector import CrackDetector
from tierflow.transport.certs import init_pki
from tierflow.types import Tier


@pytest.fixture
def net(tmp_path: Path) -> FakeNetwork:
    init_pki(tmp_path / "pki", [t.value for t in Tier])
    network = FakeNetwork(tmp_path / "pki")
    lm = resolve_model("demo-lm")
    network.node(Tier.CLOUD, lm, detector="crack-cloud")
    network.node(Tier.EDGE, lm, ["cloud"], detector="crack-edge")
    return network


def frame(prompt: str, seed: int) -> np.ndarray:
    pixels: np.ndarray = render(parse_prompt(prompt).scene, 256, seed=seed).image
    return pixels


CRACKED = frame("a grey pipe with a crack on grass", 5)


def unsure_frame() -> np.ndarray:
    """A frame the edge's detector is not quite sure of (most saturate at confidence 1.0)."""
    edge = CrackDetector.open(resolve_model("crack-edge"))
    for seed in range(40):
        for prompt in ("a small grey wall with a crack on sand at night", "a small black pipe at night"):
            pixels = frame(prompt, seed)
            if edge.detect(pixels).confidence < 0.999:
                return pixels
    raise AssertionError("every candidate frame saturated the edge's confidence")


def detectors(net: FakeNetwork) -> TieredDetectors:
    return TieredDetectors(None, net.peers("device", ["edge", "cloud"]))


def test_a_confident_edge_answer_stands_and_matches_the_edge_model(net: FakeNetwork) -> None:
    found = asyncio.run(detectors(net).inspect(CRACKED, escalate_below=0.5))
    own = CrackDetector.open(resolve_model("crack-edge")).detect(CRACKED)
    assert found.final.tier is Tier.EDGE and not found.escalated
    assert found.final.cracked == own.cracked and found.final.score == pytest.approx(own.score, abs=1e-6)
    assert [call[1:] for call in net.calls] == [("edge", "detect_cracks")]


def test_a_hard_example_goes_to_the_cloud_whose_answer_stands(net: FakeNetwork) -> None:
    hard = unsure_frame()
    found = asyncio.run(detectors(net).inspect(hard, escalate_below=1.0))
    cloud = CrackDetector.open(resolve_model("crack-cloud")).detect(hard)
    assert found.escalated and found.first.tier is Tier.EDGE and found.final.tier is Tier.CLOUD
    assert found.final.score == pytest.approx(cloud.score, abs=1e-6)
    assert found.to_dict()["route"]["first"]["tier"] == "edge"
    off = asyncio.run(detectors(net).inspect(hard, escalate_below=1.0, escalate=False))
    assert not off.escalated and off.final.tier is Tier.EDGE and "escalation off" in off.reason


def test_without_the_cloud_the_edge_answer_stands_and_says_why(net: FakeNetwork) -> None:
    net.kill("cloud")
    found = asyncio.run(detectors(net).inspect(unsure_frame(), escalate_below=1.0))
    assert found.final.tier is Tier.EDGE and not found.escalated
    assert "could not answer" in found.reason and found.failed and found.failed[0].startswith("cloud")


def test_without_the_edge_the_cloud_answers_and_without_both_it_is_a_clear_error(net: FakeNetwork) -> None:
    net.kill("edge")
    found = asyncio.run(detectors(net).inspect(CRACKED))
    assert found.final.tier is Tier.CLOUD and not found.escalated
    assert {f.split(":")[0] for f in found.failed} == {"edge", "device"}
    net.kill("cloud")
    with pytest.raises(TierUnavailableError, match="no tier could run a crack detector"):
        asyncio.run(detectors(net).inspect(CRACKED))


def test_bad_requests_are_refused(net: FakeNetwork, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="escalate_below"):
        asyncio.run(detectors(net).inspect(CRACKED, escalate_below=0.3))
    with pytest.raises(InvalidInputError, match="uint8"):
        asyncio.run(detectors(net).detect(Tier.EDGE, CRACKED.astype(np.float32)))
    lm_only = FakeNetwork(net.certs)
    lm_only.node(Tier.EDGE, resolve_model("demo-lm"))
    with pytest.raises(ModelNotFoundError, match="no crack detector"):
        asyncio.run(TieredDetectors(None, lm_only.peers("device", ["edge"])).detect(Tier.EDGE, CRACKED))


def test_the_recent_requests_list_an_escalated_inspection_with_both_tiers() -> None:
    from tierflow.api.recent import RecentRequests
    from tierflow.engine.inspection import Inspection, TierDetection

    edge = TierDetection(Tier.EDGE, "edge", False, 0.4, 0.6, None, 0.002, 0.01)
    cloud = TierDetection(Tier.CLOUD, "cloud", True, 0.97, 0.97, (0.1, 0.2, 0.3, 0.4), 0.02, 0.05)
    recent = RecentRequests()
    recent.inspection(Inspection(cloud, edge, True, "confidence 0.600 < 0.9"))
    (item,) = recent.list()
    assert (item["kind"], item["tier"], item["cracked"]) == ("inspection", "cloud", True)
    assert item["events"] == [{"event": "escalated", "tier": "cloud"}]
    assert item["compute_s"] == {"edge": 0.002, "cloud": 0.02} and item["wall_s"] == 0.06
