"""TieredImages at the entry point over real edge and cloud node processes: one deployment serves the LM
and images at once, every tier with its own target of a random-image package.

The edge and cloud are node processes of a LocalDeployment (demo-lm as their main model, the package as
their image model); the device node runs in this process, as `tierflow node --tier device --store ...
--image-model ...` would, so that its entry point's ``images`` is the object under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.packages import compile_bundled
from tierflow.context.auth import issue_key
from tierflow.engine.images import ImageCapability, TieredImages
from tierflow.errors import InvalidInputError, TierUnavailableError
from tierflow.model.package import Package
from tierflow.node.config import NodeConfig
from tierflow.node.deploy import LocalDeployment, deploy_local
from tierflow.node.server import NodeServer
from tierflow.runtime.loader import load
from tierflow.types import Tier

pytestmark = pytest.mark.slow

SPANS = "device=0-1,edge=2-3,cloud=4-5"  # demo-lm's six layers on all three tiers
TARGETS = {Tier.DEVICE: "phone", Tier.EDGE: "edge", Tier.CLOUD: "cloud"}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bundled("random-image", tmp_path_factory.mktemp("img") / "image.tfm")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, package: Path) -> Iterator[LocalDeployment]:
    root = tmp_path_factory.mktemp("deploy")
    deployment = deploy_local(
        "demo-lm",
        root / "pki",
        "wifi",
        image_models={Tier.EDGE: package, Tier.CLOUD: package},
        log_dir=root,
        startup_timeout=120,
    )
    yield deployment
    deployment.stop()


def with_device(
    deployment: LocalDeployment,
    package: Path,
    tmp_path: Path,
    body: Callable[[NodeServer, TieredImages], Awaitable[None]],
    spans: str | None = None,
) -> None:
    """The device node (the entry point) with the package's phone target as its image model."""

    async def go() -> None:
        config = NodeConfig(
            tier=Tier.DEVICE,
            model="demo-lm",
            image_model=str(package),
            certs=deployment.certs,
            threads=1,
            peers=deployment.peers,
            store=str(tmp_path / "contexts.sqlite"),
            spans=spans,
        )
        node = NodeServer(config)
        await node.start()
        try:
            assert node.api is not None and node.api.images is not None
            await body(node, node.api.images)
        finally:
            await node.stop()

    asyncio.run(go())


def expected_capabilities(package: Path) -> dict[Tier, ImageCapability]:
    targets = Package.open(package).manifest.targets
    return {
        tier: ImageCapability(targets[name].max_resolution, name == "cloud", targets[name].sha256[:16])
        for tier, name in TARGETS.items()
    }


def test_capabilities_of_every_tier(deployment: LocalDeployment, package: Path, tmp_path: Path) -> None:
    async def body(_: NodeServer, images: TieredImages) -> None:
        caps = await images.capabilities()
        assert caps == expected_capabilities(package)
        assert [c.max_resolution for c in caps.values()] == [256, 1024, 2048]
        for tier in (Tier.EDGE, Tier.CLOUD):  # what the node processes said when they started
            assert caps[tier].model_id == deployment.nodes[tier].image_model_id

    with_device(deployment, package, tmp_path, body)


def test_images_on_every_tier_and_text_through_all_three_at_once(
    deployment: LocalDeployment, package: Path, tmp_path: Path
) -> None:
    async def body(node: NodeServer, images: TieredImages) -> None:
        for tier, target in TARGETS.items():
            made = await images.generate(tier, "a red car", 64, None, 3)
            assert made.tier is tier and made.seed == 3
            assert made.refined is (tier is Tier.CLOUD)  # refine unset: the target refines if it can
            assert made.pixels.shape == (64, 64, 3) and made.pixels.dtype == np.uint8
            assert made.wall_s >= made.elapsed_s > 0
            here = load(package, target=target, threads=1).generate("a red car", resolution=64, seed=3)
            np.testing.assert_array_equal(made.pixels, here.pixels)  # that tier's own target made it
        # a remote error keeps its type, and names the tier and the cap
        with pytest.raises(InvalidInputError, match=r"tier 'edge'.*up to 1024 px; asked for 2048"):
            await images.generate(Tier.EDGE, "a red car", 2048, None, 3)
        with pytest.raises(InvalidInputError, match="tier 'edge'.*no refiner"):
            await images.generate(Tier.EDGE, "a red car", 64, True, 3)
        with pytest.raises(InvalidInputError, match="up to 256 px; asked for 512"):
            await images.generate(Tier.DEVICE, "a red car", 512, None, 3)
        unrefined = await images.generate(Tier.CLOUD, "a red car", 64, False, 3)
        assert not unrefined.refined
        # the same deployment serves the language model across the three tiers meanwhile
        assert node.api is not None
        key = issue_key(node.api.store, "test").key
        async with httpx.AsyncClient(base_url=f"http://{node.http_address}", timeout=60) as http:
            reply = await http.post(
                "/generate",
                json={"prompt": "def ", "max_tokens": 4, "temperature": 0},
                headers={"Authorization": f"Bearer {key}"},
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["route"]["tiers"] == ["device", "edge", "cloud"]

    with_device(deployment, package, tmp_path, body, spans=SPANS)


def test_a_tier_taken_down_is_left_out_and_refuses_work(
    deployment: LocalDeployment, package: Path, tmp_path: Path
) -> None:  # last in this module: the deployment goes on without its edge
    async def body(_: NodeServer, images: TieredImages) -> None:
        assert Tier.EDGE in await images.capabilities()
        deployment.nodes[Tier.EDGE].stop()  # the process ends (terminate, then wait for it)
        assert not deployment.nodes[Tier.EDGE].alive()
        caps = await images.capabilities()
        assert set(caps) == {Tier.DEVICE, Tier.CLOUD}
        with pytest.raises(TierUnavailableError) as caught:
            await images.generate(Tier.EDGE, "a red car", 64, None, 3)
        assert caught.value.tier == Tier.EDGE.value
        made = await images.generate(Tier.CLOUD, "a red car", 64, None, 3)  # the others still work
        assert made.tier is Tier.CLOUD and made.refined

    with_device(deployment, package, tmp_path, body)
