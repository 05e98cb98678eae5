"""Three node processes exchange tensors over mTLS through the link emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from tierflow.engine.split_runner import SplitPlan, SplitRunner
from tierflow.errors import TierUnavailableError
from tierflow.model.registry import resolve_model
from tierflow.node.launch import NodeProcess, start_node
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner
from tierflow.transport.certs import init_pki
from tierflow.transport.linkemu import LinkEmulator
from tierflow.transport.tls import load_identity

pytestmark = pytest.mark.slow

PLAN = SplitPlan(
    stages=(("device", ("stem/out",)), ("edge", ("inc2/out",)), ("cloud", ("logits",))),
    returns=("logits",),
)
# stem/out skips the edge: the cloud's long skip connection needs it, the edge's blocks do not
SKIP_PLAN = SplitPlan(
    stages=(("device", ("stem/out", "inc1/out")), ("edge", ("down2/out",)), ("cloud", ("logits",))),
    returns=("logits",),
)


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("tiers")
    certs = root / "pki"
    init_pki(certs, ["device", "edge", "cloud"])
    model = resolve_model("demo-vision")
    cloud = start_node("cloud", model, certs, log=root / "cloud.log")
    edge_cloud = LinkEmulator(cloud.data_plane, "wifi").start()
    edge = start_node("edge", model, certs, peers={"cloud": edge_cloud.hostport}, log=root / "edge.log")
    device_edge = LinkEmulator(edge.data_plane, "4g").start()
    yield {
        "certs": certs,
        "model": model,
        "cloud": cloud,
        "edge": edge,
        "device_edge": device_edge,
        "edge_cloud": edge_cloud,
    }
    device_edge.stop()
    edge_cloud.stop()
    for node in (edge, cloud):
        node.stop()


def _runner(tiers: dict[str, object]) -> SplitRunner:
    model = onnx.load(str(tiers["model"]))
    identity = load_identity(tiers["certs"], "device")  # type: ignore[arg-type]
    return SplitRunner(
        model,
        identity,
        {"edge": tiers["device_edge"].hostport},  # type: ignore[attr-defined]
        SessionOptions(intra_op_threads=1),
    )


# the edge computes nothing and only relays the device's tensors to the cloud
RELAY_PLAN = SplitPlan(
    stages=(("device", ("stem/out",)), ("edge", ()), ("cloud", ("logits",))),
    returns=("logits",),
)


@pytest.mark.parametrize(
    "plan", [PLAN, SKIP_PLAN, RELAY_PLAN], ids=["chain", "skip-over-edge", "edge-relays"]
)
def test_split_across_three_processes_equals_the_whole_model(
    tiers: dict[str, object], plan: SplitPlan
) -> None:
    image = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    whole = StageRunner(onnx.load(str(tiers["model"])), SessionOptions(intra_op_threads=1)).run(
        {"image": image}, ["logits"]
    )["logits"]

    async def go() -> None:
        runner = _runner(tiers)
        try:
            result = await runner.run({"image": image}, plan)
        finally:
            await runner.close()
        np.testing.assert_allclose(result.outputs["logits"], whole, rtol=1e-5, atol=1e-5)
        computing = {tier for tier, outputs in plan.stages if outputs and tier != "device"}
        assert set(result.remote_compute_s) == computing
        assert result.network_s > 0

    asyncio.run(go())
    link: LinkEmulator = tiers["device_edge"]  # type: ignore[assignment]
    assert link.stats().up.bytes > 224 * 224 * 4  # the cut tensors really crossed the emulated link
    edge: NodeProcess = tiers["edge"]  # type: ignore[assignment]
    metrics = httpx.get(f"http://{edge.http}/metrics").text
    assert 'tierflow_node_requests_total{op="run",status="ok"}' in metrics
    assert httpx.get(f"http://{edge.http}/readyz").json()["status"] == "ready"


def test_a_dead_tier_is_reported_by_name(tiers: dict[str, object], tmp_path: Path) -> None:
    certs: Path = tiers["certs"]  # type: ignore[assignment]
    model = tiers["model"]
    lonely_edge = start_node("edge", model, certs, peers={"cloud": "127.0.0.1:9"})  # nothing listens on :9
    try:

        async def go() -> None:
            runner = SplitRunner(
                onnx.load(str(model)),
                load_identity(certs, "device"),
                {"edge": lonely_edge.data_plane},
                SessionOptions(intra_op_threads=1),
            )
            try:
                with pytest.raises(TierUnavailableError, match="cloud") as caught:
                    await runner.run({"image": np.zeros((1, 3, 224, 224), np.float32)}, PLAN)
                assert caught.value.tier == "cloud"  # relayed by the edge, carried as data
            finally:
                await runner.close()

        asyncio.run(go())
    finally:
        lonely_edge.stop()


def test_privacy_noise_on_what_leaves_the_device_and_its_budget(tiers: dict[str, object]) -> None:
    from tierflow.errors import PrivacyBudgetError
    from tierflow.wire.privacy import GaussianMechanism, PrivacyAccountant

    image = np.random.default_rng(2).normal(size=(1, 3, 224, 224)).astype(np.float32)
    mechanism = GaussianMechanism(epsilon=0.5, delta=1e-5, clip_norm=50.0)
    budget = PrivacyAccountant(epsilon_budget=1.0)

    async def go() -> None:
        runner = SplitRunner(
            onnx.load(str(tiers["model"])),
            load_identity(tiers["certs"], "device"),  # type: ignore[arg-type]
            {"edge": tiers["device_edge"].hostport},  # type: ignore[attr-defined]
            SessionOptions(intra_op_threads=1),
            privacy=mechanism,
            accountant=budget,
        )
        plain = _runner(tiers)
        try:
            exact = await plain.run({"image": image}, PLAN)
            noised = await runner.run({"image": image}, PLAN)
            assert not np.allclose(noised.outputs["logits"], exact.outputs["logits"])
            await runner.run({"image": image}, PLAN)  # second release: epsilon 1.0 spent
            link: LinkEmulator = tiers["device_edge"]  # type: ignore[assignment]
            sent = link.stats().up.bytes
            with pytest.raises(PrivacyBudgetError, match="budget exhausted"):
                await runner.run({"image": image}, PLAN)
            assert link.stats().up.bytes == sent  # refused before anything left the device
        finally:
            await runner.close()
            await plain.close()

    asyncio.run(go())
    assert budget.releases == 2
