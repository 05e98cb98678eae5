"""Image generation routed by SLA, network and battery, on real nodes (in-process data plane).

Every tier serves its own target of a random-image package (phone 256 px, edge 1024, cloud 2048 with
the refiner): the seed's example must hold -- a good network gets the cloud's refined 2048 px, a
latency budget only the edge meets gets the edge's 1024, no network gets the phone's best.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.support.fake_peers import FakeNetwork
from tests.support.packages import compile_bundled
from tierflow.api.image_routes import ImageBody
from tierflow.compiler.bundled import bundled_package
from tierflow.engine.image_routing import RoutedImages
from tierflow.errors import InvalidInputError
from tierflow.model.registry import resolve_model
from tierflow.node.server import NodeServer
from tierflow.router.energy import BatteryState
from tierflow.router.sla import SLA, SLAUnmetError
from tierflow.runtime.image_result import ImageEdit
from tierflow.transport.certs import init_pki
from tierflow.types import Tier
from tierflow.types.links import get_profile
from tierflow.types.tasks import TaskKind

PROMPT = "a red car on a road"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bundled("random-image", tmp_path_factory.mktemp("img") / "image.tfm")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_pki(tmp_path / "pki", [t.value for t in Tier])
    return tmp_path / "pki"


def deployment(pki: Path, tmp_path: Path, package: Path) -> tuple[FakeNetwork, NodeServer]:
    """The edge on the local wifi, the cloud over 4g (the planning estimates of the device's links)."""
    lm = resolve_model("demo-lm")
    net = FakeNetwork(pki)
    net.node(Tier.CLOUD, lm, image_model=str(package))
    net.node(Tier.EDGE, lm, ["cloud"], image_model=str(package))
    dev = net.node(
        Tier.DEVICE,
        lm,
        ["edge", "cloud"],
        store=str(tmp_path / "contexts.db"),
        image_model=str(package),
        links={"device-edge": "wifi", "device-cloud": "4g", "edge-cloud": "backhaul"},
    )
    return net, dev


def routed(node: NodeServer) -> RoutedImages:
    assert node.api is not None and node.api.routed_images is not None
    return node.api.routed_images


def predicted(decision: object, tier: Tier, resolution: int) -> float:
    for alt in decision.alternatives:  # type: ignore[attr-defined]
        if alt.offer.tier is tier and alt.offer.resolution == resolution:
            assert alt.predicted_s is not None
            return float(alt.predicted_s)
    raise AssertionError(f"no offer {tier} {resolution}")


def test_the_seeds_example_cloud_2048_refined_edge_1024_in_a_budget_phone_256_offline(
    pki: Path, tmp_path: Path, package: Path
) -> None:
    async def go() -> None:
        _, dev = deployment(pki, tmp_path, package)
        images = routed(dev)
        assert images.lm is not None
        await images.lm.start()
        best = await images.generate(PROMPT, 2048, SLA.parse({"prefer": "quality", "min_resolution": 256}))
        assert (best.image.tier, best.resolution, best.image.refined) == (Tier.CLOUD, 2048, True)
        assert best.image.pixels.shape == (2048, 2048, 3)
        # a budget the cloud's 1024 and 2048 miss over 4g but the edge's 1024 over wifi meets
        edge_1024 = predicted(best.decision, Tier.EDGE, 1024)
        cloud_1024 = predicted(best.decision, Tier.CLOUD, 1024)
        assert edge_1024 < cloud_1024  # what the set-up gives: 3 MB over wifi vs over 4g
        budget = (edge_1024 + cloud_1024) / 2
        fast = await images.generate(PROMPT, 2048, SLA.parse(
            {"prefer": "quality", "min_resolution": 256, "max_latency": budget}
        ))
        assert (fast.image.tier, fast.resolution) == (Tier.EDGE, 1024), fast.decision.reason
        # the phone loses its network: the device's best, 256 px, labelled degraded only if it misses
        assert images.lm is not None
        conv_router = images.router
        await images.lm.set_access(get_profile("offline"))
        alone = await images.generate(PROMPT, 1024, SLA.parse({"min_resolution": 256, "offline_ok": True}))
        assert (alone.image.tier, alone.resolution) == (Tier.DEVICE, 256)
        why = {a.offer.tier: a.why for a in alone.decision.alternatives if not a.feasible}
        assert "no network" in why[Tier.CLOUD]
        # what was observed went into the matrix (seconds per image)
        assert conv_router.matrix.cell("image_256", Tier.DEVICE).count == 1
        assert conv_router.matrix.cell("image_2048", Tier.CLOUD).count == 1
        # and the bytes its pictures took, which the next decisions' transfer times start from
        assert images.sizes.expect(Tier.CLOUD, 2048) == len(best.image.png)
        assert images.sizes.expect(Tier.EDGE, 1024) == len(fast.image.png)
        assert images.sizes.expect(Tier.EDGE, 256) > 100_000  # its calibration: noise, twice the prior

    asyncio.run(go())


def test_a_failed_tier_is_retried_on_the_next_offer_and_a_hung_one_within_the_budget(
    pki: Path, tmp_path: Path, package: Path
) -> None:
    async def go() -> None:
        net, dev = deployment(pki, tmp_path, package)
        images = routed(dev)
        await images.capabilities()  # every tier measured once
        net.kill("cloud")
        route = await images.generate(PROMPT, 2048, SLA.parse({"prefer": "quality", "min_resolution": 512}))
        assert [f["tier"] for f in route.failed] == ["cloud"]
        assert (route.image.tier, route.resolution) == (Tier.EDGE, 1024)
        assert Tier.CLOUD not in await images.capabilities()  # asked again: the cloud is gone
        # the edge hangs: the request gives up on it when the budget is spent, and offline_ok
        # takes the device's answer rather than none, labelled degraded
        door = net.hold("edge")
        sla = SLA.parse({"prefer": "quality", "min_resolution": 256, "max_latency": 2.0, "offline_ok": True})
        route = await images.generate(PROMPT, 1024, sla)
        assert door.waiting.is_set()
        assert route.failed and route.failed[0]["tier"] == "edge" and "no answer" in route.failed[0]["error"]
        assert route.image.tier is Tier.DEVICE and route.degraded
        net.release("edge")
        # a retry that only finds a smaller image than the SLA's least is labelled degraded
        net.kill("edge")
        await images.capabilities()
        small = await images.generate(PROMPT, 1024, SLA.parse({"min_resolution": 1024, "offline_ok": True}),
                                      pin=None)
        assert small.resolution < 1024 and small.degraded

    asyncio.run(go())


def test_the_energy_policy_and_the_sla_bound_what_images_are_made_where(
    pki: Path, tmp_path: Path, package: Path
) -> None:
    async def go() -> None:
        _, dev = deployment(pki, tmp_path, package)
        images = routed(dev)
        low = BatteryState(level=10.0)
        route = await images.generate(PROMPT, 1024, SLA.parse({"min_resolution": 256, "offline_ok": True}),
                                      battery=low)
        assert route.image.tier is Tier.DEVICE and "battery 10 %" in route.decision.reason
        with pytest.raises(SLAUnmetError, match="the best is"):  # the phone makes 256 at most
            await images.generate(PROMPT, 1024, SLA.parse({"min_resolution": 1024}), battery=low)
        with pytest.raises(InvalidInputError, match="min_resolution 1024 is above"):
            await images.generate(PROMPT, 512, SLA.parse({"min_resolution": 1024}))
        with pytest.raises(InvalidInputError, match="no image level"):
            await images.generate(PROMPT, 300, SLA())
        pinned = await images.generate(PROMPT, 512, SLA.parse({"min_resolution": 256}), pin=Tier.EDGE)
        assert pinned.image.tier is Tier.EDGE

    asyncio.run(go())


def test_clips_and_edits_are_predicted_from_what_each_tier_measured_for_them(
    pki: Path, tmp_path: Path, tierflow_home: Path
) -> None:
    pipeline = bundled_package("demo-image", tierflow_home)  # a model that repaints and makes clips

    async def go() -> None:
        _, dev = deployment(pki, tmp_path, pipeline)
        images = routed(dev)
        assert images.lm is not None
        await images.lm.start()  # the links' estimates
        capabilities = await images.capabilities()
        # a clip's frame costs the tier's own image of that level (the cloud's sampler and refiner run
        # at every level, so its 512 px frame is not four of its 256 px ones)
        offers, _, _ = images.clip_offers(capabilities, 4, 512)
        cloud = {(o.resolution, o.frames): o.latency_s for o in offers if o.tier is Tier.CLOUD}
        for level in (256, 512):
            trip = images.hop_s(Tier.CLOUD, images.sizes.expect_clip(Tier.CLOUD, 4, level))[0]
            assert cloud[(level, 4)] == pytest.approx(4 * images.compute_s(Tier.CLOUD, level) + trip)
        made = await images.clip(PROMPT, 4, 512, SLA.parse({"min_resolution": 512, "prefer": "quality"}),
                                 pin=Tier.CLOUD)
        assert (made.clip.tier, made.clip.frames, made.resolution) == (Tier.CLOUD, 4, 512)
        assert images.router.matrix.cell(TaskKind.CLIP, Tier.CLOUD).count == 1
        # an edit learns in the edits' row, and the next edit's offer is predicted from what it learned
        picture = np.full((512, 512, 3), 90, np.uint8)
        mask = np.zeros((512, 512), bool)
        mask[128:384, 128:384] = True
        edit = ImageEdit(picture, mask)
        await images.generate(PROMPT, 512, SLA.parse({"min_resolution": 512}), pin=Tier.EDGE, edit=edit)
        cell = images.router.matrix.cell(TaskKind.IMAGE_EDIT, Tier.EDGE)
        assert cell.count == 1 and cell.mean_s is not None and cell.prior_s is not None
        learned = cell.mean_s / cell.prior_s  # what the edge's edit took over what was expected
        offers, _, _ = images.offers(capabilities, 512, edit)
        edge = next(o for o in offers if o.tier is Tier.EDGE and o.resolution == 512)
        again = images.router.matrix.cell(TaskKind.IMAGE_EDIT, Tier.EDGE)  # its prior now this offer's
        assert again.mean_s is not None and again.prior_s is not None
        assert again.mean_s / again.prior_s == pytest.approx(learned)
        assert edge.latency_s == pytest.approx(again.mean_s)

    asyncio.run(go())


def test_the_image_body_reads_openai_sizes_and_defaults_to_quality() -> None:
    assert ImageBody(prompt="x", size="1024x1024").resolution() == 1024
    assert ImageBody(prompt="x").resolution() == 512
    assert ImageBody(prompt="x").image_sla().prefer.value == "quality"
    assert ImageBody(prompt="x", sla={"prefer": "latency"}).image_sla().prefer.value == "latency"
    for size in ("1024x512", "300x300", "big"):
        with pytest.raises(InvalidInputError, match="size"):
            ImageBody(prompt="x", size=size).resolution()
