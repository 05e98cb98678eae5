"""The split engine: planning, learning and re-planning around real split runs.

The first tests need no processes (plans, results and clocks are given); then real nodes in
this process, reached through an in-process fake of the data plane (tests/support/fake_peers.py),
lose the cloud in the middle of a request; the last one kills a real cloud node process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.support.fake_peers import FakeNetwork
from tierflow.engine.split_engine import SplitEngine, failed_tier, to_split_plan
from tierflow.engine.split_runner import SplitResult
from tierflow.errors import PlanError, TierUnavailableError
from tierflow.model.registry import resolve_model
from tierflow.node.launch import NodeProcess, start_node
from tierflow.planner.estimate import LinkEstimator, SnapshotSource
from tierflow.planner.executable import actual_path
from tierflow.planner.graph import UnitGraph
from tierflow.planner.overhead import measured_overhead, set_overhead
from tierflow.planner.profile import TierProfile
from tierflow.planner.search import evaluate_plan
from tierflow.planner.snapshot import Snapshot, TierState, links_for
from tierflow.profiling.graph_builder import build_unit_graph
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner
from tierflow.transport.certs import init_pki
from tierflow.transport.linkemu import LinkEmulator
from tierflow.transport.peers import Peers
from tierflow.transport.tls import load_identity
from tierflow.types import Tier
from tierflow.types.links import LinkProfile, get_profile

OPTIONS = SessionOptions(intra_op_threads=1)
MBIT = 1e6


@cache
def vision() -> tuple[onnx.ModelProto, UnitGraph]:
    proto = onnx.load(str(resolve_model("demo-vision")))
    return proto, build_unit_graph(proto)


def _profile(graph: UnitGraph, tier: str, unit_s: dict[str, float]) -> TierProfile:
    return TierProfile(model_sha256=graph.model_sha256, tier=tier, fingerprint=tier,
                       granularity=graph.granularity, input_shapes=dict(graph.input_shapes),
                       unit_s=unit_s, stages=())


def _uniform(graph: UnitGraph, seconds: float, **special: float) -> dict[str, float]:
    return {u.name: special.get(u.name, seconds) for u in graph.units}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine") / "pki"
    init_pki(root, ["device", "edge", "cloud"])
    return root


def _engine(
    pki: Path, source: SnapshotSource, peers: dict[str, str] | None = None, learn: bool = True,
    clients: Peers | None = None,
) -> SplitEngine:
    proto, graph = vision()
    shares = _uniform(graph, 1.0)
    identity = load_identity(pki, "device")
    return SplitEngine(proto, source, identity, peers or {}, shares=shares, options=OPTIONS, learn=learn,
                       clients=clients)


# --- without processes ---------------------------------------------------------------------


def test_the_tier_an_error_carries_is_blamed_not_one_its_message_names() -> None:
    relayed = TierUnavailableError("tier 'edge': tier 'cloud' failed during the request", tier="cloud")
    assert failed_tier(relayed, ["edge", "cloud"]) == "cloud"
    # the message names the edge, the error carries the cloud: the carried tier wins
    assert failed_tier(TierUnavailableError("tier 'edge' is unreachable", tier="cloud"), ["cloud"]) == "cloud"
    assert failed_tier(TierUnavailableError("tier 'gpu7' failed", tier="gpu7"), ["edge", "cloud"]) is None
    assert failed_tier(TierUnavailableError("tier 'edge' is unreachable"), ["edge"]) is None


def test_a_relay_only_hop_is_skipped_in_the_split_plan() -> None:
    _, graph = vision()
    tiers = tuple(TierState(name=t, unit_s=_uniform(graph, 0.01)) for t in ("device", "edge", "cloud"))
    snap = Snapshot(tiers=tiers, links=links_for(get_profile("wifi")))
    n = len(graph.units)
    relayed = evaluate_plan(graph, snap, ("device", "edge", "cloud"), [0, 0] + [2] * (n - 2))
    assert relayed.relays
    split = to_split_plan(relayed)
    assert [tier for tier, _ in split.stages] == ["device", "cloud"]
    assert actual_path(relayed) == ("device", "cloud")
    assert split.returns == ("logits",)
    # the device's stage sends stem/out and inc1/out on: both are outputs of its stage
    assert set(split.stages[0][1]) == {"stem/out", "inc1/out"}


def test_per_hop_overhead_is_recovered_from_requests() -> None:
    _, graph = vision()
    tiers = tuple(TierState(name=t, unit_s=_uniform(graph, 0.01)) for t in ("device", "edge", "cloud"))
    links = [LinkEstimator.from_state(s) for s in links_for(get_profile("wifi"))]
    snap = Snapshot(tiers=tiers, links=tuple(e.state() for e in links))
    n = len(graph.units)
    truth = {frozenset(("device", "edge")): 0.004, frozenset(("device", "cloud")): 0.006,
             frozenset(("edge", "cloud")): 0.011}
    samples = []
    for path, labels in ((("device", "edge"), [0, 0, 0] + [1] * (n - 3)),
                         (("device", "cloud"), [1] * n),
                         (("device", "edge", "cloud"), [0, 1, 1] + [2] * (n - 3))):
        p = evaluate_plan(graph, snap, path, labels)
        network = p.prediction.transfer_s + p.prediction.link_s  # what the links alone take
        network += sum(truth[frozenset(h)] for h in zip(path, path[1:], strict=False))
        compute = {t: 0.01 for t in path[1:]}
        result = SplitResult({}, total_s=0.02 + sum(compute.values()) + network, device_s=0.02,
                             remote_compute_s=compute)
        samples.append((p, result.network_s))
    found = measured_overhead(samples, links)
    assert found == pytest.approx(truth, abs=1e-9)
    set_overhead(links, found)
    assert {frozenset((e.a, e.b)): e.overhead_s for e in links} == pytest.approx(truth)


def test_the_engine_learns_remote_speed_and_a_slower_link_and_replans(pki: Path) -> None:
    _, graph = vision()
    clock = Clock()
    fast_link = links_for(get_profile("datacenter").replace(name="fast", up_bps=100 * MBIT,
                                                            down_bps=100 * MBIT, rtt_s=0.01),
                          tiers=("device", "cloud"))
    source = SnapshotSource(
        graph,
        {"device": _profile(graph, "device", _uniform(graph, 0.01)),
         "cloud": _profile(graph, "cloud", _uniform(graph, 0.001))},
        [LinkEstimator.from_state(s) for s in fast_link],
        clock=clock,
    )
    engine = _engine(pki, source, {"cloud": "127.0.0.1:9"})  # never called: observations are given
    first = engine.decide()
    assert first.kind() == "cloud-only"  # 9 ms + 10 ms RTT + ~12 ms transfer beats 90 ms on the device
    # the cloud reports 3x the compute it was profiled at: its profile follows
    engine.observe(first, SplitResult({}, total_s=0.06, device_s=0.0, remote_compute_s={"cloud": 0.027}))
    assert sum(engine.snapshot().tier("cloud").unit_s.values()) == pytest.approx(0.027)
    # then the uplink slows to ~2.4 Mbit/s: the request's network time grows by ~0.5 s
    sent = sum(h.wire_bytes for h in first.prediction.traffic if h.direction == "up")
    for _ in range(4):
        clock.now += 1.0
        network = 0.01 + sent * 8 / 2.4e6
        engine.observe(first, SplitResult({}, total_s=network + 0.027, device_s=0.0,
                                          remote_compute_s={"cloud": 0.027}))
    up = engine.snapshot().link("device", "cloud")
    assert up is not None and up.up_bps < 4e6
    clock.now = 11.0  # past the minimum dwell of the first plan
    second = engine.decide()
    assert engine.decisions[-1].reason == "link-change"
    assert engine.decisions[-1].switched
    assert second.kind() == "device-only"


def test_a_plan_that_cannot_fit_raises_plan_error_naming_why(pki: Path) -> None:
    _, graph = vision()
    source = SnapshotSource(
        graph,
        {t: _profile(graph, t, _uniform(graph, 0.01)) for t in ("device", "edge", "cloud")},
        [LinkEstimator.from_state(s) for s in links_for(get_profile("4g"))],
        memory={"device": 4096.0, "edge": 4096.0, "cloud": 4096.0},
    )
    engine = _engine(pki, source)
    with pytest.raises(PlanError, match=r"no plan fits: unit '\w+' needs .* but \w+ has 4\.0 KiB"):
        engine.decide()
    with pytest.raises(PlanError, match="needs"):
        asyncio.run(engine.run({"image": np.zeros((1, 3, 224, 224), np.float32)}))


# --- losing the cloud mid-request ----------------------------------------------------------

WAN = get_profile("datacenter").replace(name="wan", rtt_s=0.05, jitter_s=0.0)  # between edge and cloud


def _edge_then_cloud_source(graph: UnitGraph, wan: LinkProfile) -> SnapshotSource:
    """Profiles that make device (stem) -> edge (inc1, down1) -> cloud (the rest) the plan, and after
    the cloud is gone device -> edge; the device reaches the cloud only through the edge."""
    links = [LinkEstimator.from_state(s) for s in links_for(get_profile("datacenter"), wan,
                                                            tiers=("device", "edge", "cloud"))
             if {s.a, s.b} != {"device", "cloud"}]
    return SnapshotSource(
        graph,
        {"device": _profile(graph, "device", _uniform(graph, 10.0, stem=0.001)),
         "edge": _profile(graph, "edge", _uniform(graph, 10.0, inc1=0.001, down1=0.001)),
         "cloud": _profile(graph, "cloud", _uniform(graph, 0.001))},
        links,
        compression="raw",
    )


def _image_and_logits() -> tuple[np.ndarray, np.ndarray]:
    proto, _ = vision()
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    return image, StageRunner(proto, OPTIONS).run({"image": image}, ["logits"])["logits"]


def test_the_cloud_dies_mid_request_and_the_engine_finishes_on_the_tiers_left(pki: Path) -> None:
    _, graph = vision()
    model = resolve_model("demo-vision")
    network = FakeNetwork(pki)  # real nodes (routing, relayed errors), no sockets: events, not timing
    network.node(Tier.CLOUD, model)
    network.node(Tier.EDGE, model, reaches=["cloud"])
    # the profiles are given and kept (no learning), so the plans before and after are known
    engine = _engine(pki, _edge_then_cloud_source(graph, WAN), learn=False,
                     clients=network.peers("device", ["edge"]))
    image, whole = _image_and_logits()

    async def go() -> None:
        try:
            first = await engine.run({"image": image})
            assert actual_path(first.plan) == ("device", "edge", "cloud")
            assert set(first.split.remote_compute_s) == {"edge", "cloud"}
            np.testing.assert_allclose(first.outputs["logits"], whole, rtol=1e-5, atol=1e-5)

            door = network.hold("cloud")
            request = asyncio.create_task(engine.run({"image": image}))
            await asyncio.wait_for(door.waiting.wait(), 30)  # it went through the edge: it is at the cloud
            assert not request.done()
            network.kill("cloud")
            second = await asyncio.wait_for(request, 30)
            assert second.lost == ("cloud",) and second.retried
            assert "cloud" not in actual_path(second.plan)
            assert second.split.remote_compute_s.keys() == {"edge"}
            np.testing.assert_allclose(second.outputs["logits"], whole, rtol=1e-5, atol=1e-5)
            assert engine.decisions[-1].reason == "broken" and engine.decisions[-1].switched
            # the request reached the edge, the edge forwarded it, the retry went to the edge alone
            assert network.calls[-3:] == [("device", "edge", "run"), ("edge", "cloud", "run"),
                                          ("device", "edge", "run")]

            third = await engine.run({"image": image})  # no retry: the plan in force avoids the cloud
            assert not third.retried and third.plan.key == second.plan.key
            assert network.calls[-1] == ("device", "edge", "run")
            np.testing.assert_allclose(third.outputs["logits"], whole, rtol=1e-5, atol=1e-5)
        finally:
            await engine.close()

    asyncio.run(go())


# --- with node processes ------------------------------------------------------------------


@pytest.fixture
def tiers(pki: Path, tmp_path: Path) -> Iterator[dict[str, object]]:
    model = resolve_model("demo-vision")
    nodes: list[NodeProcess] = []
    links: list[LinkEmulator] = []
    try:
        cloud = start_node("cloud", model, pki, log=tmp_path / "cloud.log")
        nodes.append(cloud)
        edge_cloud = LinkEmulator(cloud.data_plane, WAN).start()
        links.append(edge_cloud)
        edge = start_node("edge", model, pki, peers={"cloud": edge_cloud.hostport}, log=tmp_path / "edge.log")
        nodes.append(edge)
        device_edge = LinkEmulator(edge.data_plane, "datacenter").start()
        links.append(device_edge)
        yield {"cloud": cloud, "edge": edge, "device_edge": device_edge}
    finally:
        for link in links:
            link.stop()
        for node in nodes:
            node.stop()


@pytest.mark.slow
def test_a_dead_cloud_node_is_blamed_through_the_edge_and_left_out(
    pki: Path, tiers: dict[str, object]
) -> None:
    _, graph = vision()
    device_edge: LinkEmulator = tiers["device_edge"]  # type: ignore[assignment]
    engine = _engine(pki, _edge_then_cloud_source(graph, WAN), {"edge": device_edge.hostport}, learn=False)
    image, whole = _image_and_logits()
    cloud: NodeProcess = tiers["cloud"]  # type: ignore[assignment]

    async def go() -> None:
        try:
            first = await engine.run({"image": image})
            assert actual_path(first.plan) == ("device", "edge", "cloud")
            np.testing.assert_allclose(first.outputs["logits"], whole, rtol=1e-5, atol=1e-5)

            cloud.process.kill()
            cloud.process.wait(30)  # gone for sure: the edge's next call to it must fail
            started = time.perf_counter()
            second = await engine.run({"image": image})
            assert time.perf_counter() - started < 10.0  # noticed and retried, not waited out
            # over real gRPC, TLS and processes: the edge's reply names the cloud, the engine leaves it out
            assert second.lost == ("cloud",) and second.retried
            assert "cloud" not in actual_path(second.plan)
            assert second.split.remote_compute_s.keys() == {"edge"}
            np.testing.assert_allclose(second.outputs["logits"], whole, rtol=1e-5, atol=1e-5)
        finally:
            await engine.close()

    asyncio.run(go())
