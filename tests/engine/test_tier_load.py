"""Each tier's load in the task-resource matrix is other callers' work (engine/tier_load.py).

The meter's arithmetic runs on a given clock; then real nodes: a split stage relayed by the edge, and
two entry points sharing one cloud node over the real data plane.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.fake_peers import FakeNetwork
from tierflow.engine.images import OP_GENERATE_IMAGE
from tierflow.engine.tier_load import (
    OP_LOAD,
    ORIGIN_KEY,
    WORK_KEY,
    OriginPeers,
    TierLoads,
    WorkMeter,
    load_share,
    others,
)
from tierflow.model.registry import resolve_model
from tierflow.node.config import NodeConfig
from tierflow.node.server import OP_RUN, NodeServer
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.transport.certs import init_pki
from tierflow.transport.messages import StageRequest
from tierflow.transport.peers import PeerClients
from tierflow.transport.route import RETURN_KEY, ROUTE_KEY, Hop, encode_names, encode_route
from tierflow.transport.tls import load_identity
from tierflow.types import Tier
from tierflow.types.tasks import TaskKind


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load") / "pki"
    init_pki(root, [t.value for t in Tier])
    return root


def test_each_origins_mean_concurrency_over_the_window() -> None:
    clock = Clock()  # t = 100
    meter = WorkMeter("me", window_s=2.0, clock=clock)
    with meter.busy("car-a"):  # car-a: [100, 101]
        clock.now += 0.5
        with meter.busy("car-b"):  # car-b: [100.5, 101]
            clock.now += 0.5
    clock.now += 0.5
    running = meter.busy("car-b")  # car-b again from 101.5, still running
    running.__enter__()
    clock.now += 1.0  # t = 102.5, window [100.5, 102.5]
    assert meter.concurrency() == pytest.approx({"car-a": 0.5 / 2, "car-b": (0.5 + 1.0) / 2})
    assert meter.in_flight() == 1
    clock.now += 1.0  # t = 103.5, window [101.5, 103.5]: car-a's request and car-b's first have left it
    assert meter.concurrency() == pytest.approx({"car-b": 1.0})
    running.__exit__(None, None, None)
    clock.now += 2.0  # everything finished before the window: nothing is load any more
    assert meter.concurrency() == {} and meter.in_flight() == 0


def test_a_nodes_report_without_the_asking_origin() -> None:
    clock = Clock()
    meter = WorkMeter("cloud-1", window_s=2.0, clock=clock)
    with meter.busy("car-a"), meter.busy("car-b"), meter.busy():  # the node's own counts as its origin
        clock.now += 2.0
    report = meter.report()
    assert json.loads(str(report[WORK_KEY])) == pytest.approx({"car-a": 1.0, "car-b": 1.0, "cloud-1": 1.0})
    assert others(report, "car-a") == pytest.approx(2.0)
    assert load_share(others(report, "car-a")) == pytest.approx(2 / 3)  # beside 2 others: 3x slower


def test_the_devices_load_is_the_compute_running_on_it_now() -> None:
    matrix = TaskResourceMatrix()
    matrix.set_prior(TaskKind.IMAGE_512, Tier.DEVICE, 1.0)
    meter = WorkMeter("device-1")
    TierLoads(matrix, meter, None, "device-1")
    with meter.busy():  # another request of this entry point computes on the device
        assert matrix.load(Tier.DEVICE) == pytest.approx(0.5)
        assert matrix.predict(TaskKind.IMAGE_512, Tier.DEVICE) == pytest.approx(2.0)
        with meter.busy():
            assert matrix.predict(TaskKind.IMAGE_512, Tier.DEVICE) == pytest.approx(3.0)
    # finished work is not load: the next request on the device expects its usual time
    assert matrix.load(Tier.DEVICE) == 0.0
    assert matrix.predict(TaskKind.IMAGE_512, Tier.DEVICE) == pytest.approx(1.0)


def test_a_stage_the_edge_relays_counts_at_the_cloud_for_its_sender(pki: Path) -> None:
    model = resolve_model("demo-vision")
    network = FakeNetwork(pki)
    cloud = network.node(Tier.CLOUD, model)
    network.node(Tier.EDGE, model, reaches=["cloud"])
    device = OriginPeers(network.peers("device", ["edge"]), "car-a")
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    request = StageRequest(  # the edge only relays: the cloud computes the whole model
        OP_RUN,
        inputs={"image": image},
        meta={ROUTE_KEY: encode_route([Hop("cloud", ("logits",))]), RETURN_KEY: encode_names(["logits"])},
    )

    async def go() -> None:
        reply = await device.call("edge", request)
        assert reply.outputs["logits"].shape[0] == 1
        assert set(cloud.meter.concurrency()) == {"car-a"}  # not "edge", the cloud's direct caller
        assert network.nodes["edge"].meter.concurrency() == {}  # a relay computes nothing
        unnamed = await network.peers("device", ["cloud"]).call(
            "cloud", StageRequest(OP_RUN, inputs={"image": image}, outputs=["logits"])
        )
        assert unnamed.outputs["logits"].shape[0] == 1
        assert set(cloud.meter.concurrency()) == {"car-a", "device"}  # no origin named: its certificate

    asyncio.run(go())


@pytest.mark.slow
def test_another_entry_points_work_is_load_and_its_own_is_not(pki: Path) -> None:
    """Two cars share one cloud node over the real data plane: each sees the other's image as load."""

    async def go() -> None:
        node = NodeServer(NodeConfig(tier=Tier.CLOUD, model="random-image", certs=pki, threads=1))
        await node.start()
        address = {"cloud": node.state.data_plane_address or ""}
        car_a = OriginPeers(PeerClients(load_identity(pki, "device"), address), "car-a")
        car_b = OriginPeers(PeerClients(load_identity(pki, "device"), address), "car-b")
        seen_by_a, seen_by_b = TaskResourceMatrix(), TaskResourceMatrix()
        loads_a = TierLoads(seen_by_a, WorkMeter("car-a"), car_a, "car-a")
        loads_b = TierLoads(seen_by_b, WorkMeter("car-b"), car_b, "car-b")
        try:
            await loads_a.poll()
            assert seen_by_a.load(Tier.CLOUD) == 0.0  # an idle cloud
            image = StageRequest(OP_GENERATE_IMAGE, meta={"resolution": 256, "seed": 1})
            await car_b.call("cloud", image)
            await loads_a.poll()
            await loads_b.poll()
            assert 0.0 < seen_by_a.load(Tier.CLOUD) < 1.0  # car-b's image, within the last window
            assert seen_by_b.load(Tier.CLOUD) == 0.0  # car-b's own request is not load for car-b
            assert seen_by_a.load(Tier.EDGE) == 0.0  # no edge: nothing reported
            raw = await car_a.call("cloud", StageRequest(OP_LOAD))
            assert set(json.loads(str(raw.meta[WORK_KEY]))) == {"car-b"}  # asking is not work
            assert image.meta[ORIGIN_KEY] == "car-b"
        finally:
            await car_a.close()
            await car_b.close()
            await node.stop()

    asyncio.run(go())
