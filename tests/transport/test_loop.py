"""The tier processes' event loop: uvloop when installed, the data plane serving on it, and the
process's own event-loop policy left as it was."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tierflow.bench.dataplane import echo_handler
from tierflow.transport.certs import init_pki
from tierflow.transport.dataplane import DataPlaneClient, DataPlaneServer
from tierflow.transport.loop import run
from tierflow.transport.messages import StageRequest
from tierflow.transport.tls import load_identity

pytest.importorskip("uvloop")  # a declared dependency on Linux; absent only on other platforms


def test_run_serves_the_data_plane_on_uvloop_and_leaves_the_policy_alone() -> None:
    pki = Path(tempfile.mkdtemp()) / "pki"
    init_pki(pki, ["cloud", "device"])
    policy = asyncio.get_event_loop_policy()

    async def go() -> str:
        server = DataPlaneServer(load_identity(pki, "cloud"), echo_handler)
        port = await server.start("127.0.0.1:0")
        async with DataPlaneClient(f"127.0.0.1:{port}", load_identity(pki, "device"), "cloud") as client:
            x = np.arange(6, dtype=np.float32)
            reply = (await client.call(StageRequest("echo", inputs={"x": x}))).raise_for_error()
            np.testing.assert_array_equal(reply.outputs["x"], x)
        await server.stop(None)
        return type(asyncio.get_running_loop()).__module__

    assert run(go()).startswith("uvloop")
    assert asyncio.get_event_loop_policy() is policy
    plain = asyncio.new_event_loop()  # what the link emulator's threads get
    try:
        assert not type(plain).__module__.startswith("uvloop")
    finally:
        plain.close()
