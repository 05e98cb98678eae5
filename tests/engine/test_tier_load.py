"""Each tier's load reaches the task-resource matrix (engine/tier_load.py) over real node processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tierflow.engine.images import OP_GENERATE_IMAGE
from tierflow.engine.tier_load import LOAD_KEY, ProcessLoad, poll_loads
from tierflow.node.config import NodeConfig
from tierflow.node.server import NodeServer
from tierflow.router.matrix import TaskResourceMatrix
from tierflow.transport.certs import init_pki
from tierflow.transport.messages import StageRequest
from tierflow.transport.peers import PeerClients
from tierflow.transport.tls import load_identity
from tierflow.types import Tier


def test_a_busy_process_reports_load_and_an_idle_one_little() -> None:
    load, spread = ProcessLoad(threads=1), ProcessLoad(threads=4)
    started = time.process_time()
    while time.process_time() - started < 0.3:  # 0.3 s of this process's CPU, on one core
        pass
    one, four = load(), spread()
    assert 0.0 < four < one <= 1.0  # busy; wall time on a shared machine decides how busy
    assert one == pytest.approx(min(4 * four, 1.0), rel=0.25)  # the same work over four cores' budget


@pytest.mark.slow
def test_the_cloud_nodes_load_reaches_the_matrix(tmp_path: Path) -> None:
    init_pki(tmp_path / "pki", [t.value for t in Tier])

    async def go() -> None:
        pki = tmp_path / "pki"
        node = NodeServer(NodeConfig(tier=Tier.CLOUD, model="random-image", certs=pki, threads=1))
        await node.start()
        peers = PeerClients(load_identity(pki, "device"), {"cloud": node.state.data_plane_address or ""})
        matrix = TaskResourceMatrix()
        try:
            await poll_loads(peers, None, matrix)  # sets the node's baseline
            await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, meta={"resolution": 256, "seed": 1}))
            await poll_loads(peers, None, matrix)
            assert 0.0 < matrix.load(Tier.CLOUD) <= 1.0  # the image's compute showed as load
            assert matrix.load(Tier.EDGE) == 0.0  # no edge: nothing reported
            info = (await peers.call("cloud", StageRequest("info"))).meta
            assert 0.0 <= float(info[LOAD_KEY]) <= 1.0
        finally:
            await peers.close()
            await node.stop()

    asyncio.run(go())
