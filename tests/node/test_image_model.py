"""A node serves an image generator as a second model next to its language model (in this process).

The data plane is real (mTLS on loopback); the packages are compiled from random-image, so the caps are
the pyramid's: phone 256 px without the refiner, cloud 2048 px with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.cli import assert_one_line_error, cli
from tests.support.packages import compile_bundled
from tests.support.tiny_lm import save_tiny_lm
from tierflow.engine.images import (
    EDIT_IMAGE,
    EDIT_MASK,
    IMAGE_INFO_KEY,
    IMAGE_PNG,
    OP_GENERATE_IMAGE,
    OP_INFO,
    ImageCapability,
    TieredImages,
    edit_inputs,
    png_tensor,
    tensor_bytes,
)
from tierflow.engine.lm_hop import OP_LM_INFO
from tierflow.errors import (
    InvalidInputError,
    ModelNotFoundError,
    TierUnavailableError,
    UnsupportedModelError,
)
from tierflow.model.package import Package
from tierflow.model.scenes import parse_prompt, render
from tierflow.node.config import NodeConfig
from tierflow.node.deploy import deploy_local
from tierflow.node.server import NodeServer
from tierflow.runtime.image_result import ImageEdit, read_png
from tierflow.runtime.text_to_image import touched
from tierflow.transport.certs import init_pki
from tierflow.transport.messages import StageRequest, StageResponse
from tierflow.transport.peers import PeerClients
from tierflow.transport.tls import load_identity
from tierflow.types import Tier


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_pki(root / "pki", [t.value for t in Tier])
    return root / "pki"


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny.onnx")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bundled("random-image", tmp_path_factory.mktemp("img") / "image.tfm")


def with_node(
    pki: Path,
    body: Callable[[NodeServer, PeerClients], Awaitable[None]],
    tier: Tier = Tier.CLOUD,
    **config: object,
) -> None:
    """Start a ``tier`` node with ``config``, reach it from the device's identity, run ``body``, stop it."""

    async def go() -> None:
        node = NodeServer(NodeConfig(tier=tier, certs=pki, threads=1, **config))  # type: ignore[arg-type]
        await node.start()
        peers = PeerClients(load_identity(pki, "device"), {tier.value: node.state.data_plane_address or ""})
        try:
            await body(node, peers)
        finally:
            await peers.close()
            await node.stop()

    asyncio.run(go())


def test_an_lm_node_with_an_image_model_answers_both_over_the_data_plane(pki: Path, lm: Path) -> None:
    async def body(node: NodeServer, peers: PeerClients) -> None:
        text = await peers.call(
            "cloud", StageRequest("generate", meta={"prompt": "the cat", "max_tokens": 3, "seed": 1})
        )
        assert len(str(text.meta["text"]).split()) == 3
        assert "layer_s" in (await peers.call("cloud", StageRequest(OP_LM_INFO))).meta  # its layer spans
        meta = {"prompt": "a red car", "resolution": 64, "seed": 7}
        image = await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, meta=meta))
        pixels = pixels_of(image)
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
        assert image.meta["seed"] == 7 and image.meta["tier"] == "cloud"
        assert image.meta["refined"] is True  # random-image has a refiner; refine unset: it refines
        assert pixels.std() > 0  # a picture, not a blank
        again = await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, meta=meta))
        np.testing.assert_array_equal(pixels_of(again), pixels)  # the seed reproduces it
        assert node.image_executor is not None
        # the image model runs as the node's main model does: its threads, its SIMULATED slowdown
        assert node.image_executor.slowdown == node.executor.slowdown == 1.5
        assert node.image_executor.options == node.executor.options
        assert node.image_executor.stats["generate_image"].calls == 2
        # a request that names a model is checked against the model that serves the op
        named = StageRequest(OP_GENERATE_IMAGE, model=node.image_executor.model_id, meta=meta)
        np.testing.assert_array_equal(pixels_of(await peers.call("cloud", named)), pixels)
        with pytest.raises(ModelNotFoundError):
            await peers.call(
                "cloud", StageRequest(OP_GENERATE_IMAGE, model=node.executor.model_id, meta=meta)
            )
        info = (await peers.call("cloud", StageRequest(OP_INFO))).meta
        assert info["model_id"] == node.executor.model_id  # the main model is still the LM
        assert ImageCapability.decode(info[IMAGE_INFO_KEY]) == ImageCapability(
            max_resolution=None, has_refiner=True, model_id=node.image_executor.model_id
        )
        async with httpx.AsyncClient(base_url=f"http://{node.http_address}") as http:
            shown = (await http.get("/v1/node")).json()
        assert shown["model_id"] == node.executor.model_id
        assert shown["image"]["model_id"] == node.image_executor.model_id
        assert shown["image"]["max_resolution"] is None and shown["image"]["has_refiner"] is True

    with_node(pki, body, model=str(lm), image_model="random-image", slowdown=1.5)


def test_a_node_without_an_image_model_reports_none_and_refuses_images(pki: Path, lm: Path) -> None:
    async def body(node: NodeServer, peers: PeerClients) -> None:
        assert IMAGE_INFO_KEY not in (await peers.call("cloud", StageRequest(OP_INFO))).meta
        with pytest.raises(InvalidInputError, match="not an image generator"):
            await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, meta={"resolution": 64}))
        images = TieredImages(None, peers)
        assert await images.capabilities() == {}  # the cloud serves none; edge: no route
        with pytest.raises(UnsupportedModelError, match="device node serves no image model"):
            await images.generate(Tier.DEVICE, None, 64, None, 1)
        with pytest.raises(TierUnavailableError, match="edge") as caught:
            await images.generate(Tier.EDGE, None, 64, None, 1)
        assert caught.value.tier == "edge"
        async with httpx.AsyncClient(base_url=f"http://{node.http_address}") as http:
            assert (await http.get("/v1/node")).json()["image"] is None

    with_node(pki, body, model=str(lm))


def test_a_node_whose_only_model_is_an_image_generator_still_serves_it(pki: Path) -> None:
    async def body(node: NodeServer, peers: PeerClients) -> None:
        assert node.image_executor is None
        info = (await peers.call("cloud", StageRequest(OP_INFO))).meta
        assert ImageCapability.decode(info[IMAGE_INFO_KEY]).model_id == node.executor.model_id
        reply = await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, meta={"resolution": 64, "seed": 2}))
        assert pixels_of(reply).shape == (64, 64, 3)

    with_node(pki, body, model="random-image")


def test_a_target_cap_is_kept_and_reported(pki: Path, lm: Path, package: Path) -> None:
    manifest = Package.open(package).manifest

    async def body(node: NodeServer, peers: PeerClients) -> None:
        # the device node serves the package's phone target: 256 px, no refiner
        images = TieredImages(node.image_executor, peers)
        caps = await images.capabilities()
        assert caps == {
            Tier.DEVICE: ImageCapability(256, False, manifest.targets["phone"].sha256[:16])
        }  # its own, locally; no route to edge or cloud
        with pytest.raises(InvalidInputError, match="up to 256 px; asked for 512"):
            await images.generate(Tier.DEVICE, "a boat", 512, None, 1)
        with pytest.raises(InvalidInputError, match="up to 256 px; asked for 512"):
            await peers.call("device", StageRequest(OP_GENERATE_IMAGE, meta={"resolution": 512}))
        with pytest.raises(InvalidInputError, match="no refiner"):
            await images.generate(Tier.DEVICE, "a boat", 64, True, 1)
        made = await images.generate(Tier.DEVICE, "a boat", 64, None, 5)
        assert made.pixels.shape == (64, 64, 3) and made.seed == 5 and not made.refined
        assert made.tier is Tier.DEVICE and made.wall_s >= made.elapsed_s > 0
        # the entry point (the device node with a store) holds the same
        assert node.api is not None and node.api.images is not None
        assert node.api.images.local is node.image_executor
        assert await node.api.images.capabilities() == caps

    with_node(
        pki,
        body,
        tier=Tier.DEVICE,
        model=str(lm),
        image_model=str(package),
        store=str(pki.parent / "contexts.sqlite"),
    )


def test_image_target_picks_another_target_of_the_package(pki: Path, lm: Path, package: Path) -> None:
    async def body(node: NodeServer, peers: PeerClients) -> None:
        capability = ImageCapability.decode((await peers.call("device", StageRequest(OP_INFO))).meta["image"])
        assert (capability.max_resolution, capability.has_refiner) == (2048, True)

    with_node(pki, body, tier=Tier.DEVICE, model=str(lm), image_model=str(package), image_target="cloud")


def test_an_image_model_of_another_kind_is_refused_clearly(
    pki: Path, lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UnsupportedModelError, match=r"is a causal-lm model, not an image generator"):
        NodeServer(
            NodeConfig(tier=Tier.EDGE, model="random-image", certs=pki, threads=1, image_model=str(lm))
        )
    with pytest.raises(UnsupportedModelError, match="demo-vision is a vision model, not an image generator"):
        NodeServer(NodeConfig(tier=Tier.EDGE, model=str(lm), certs=pki, threads=1, image_model="demo-vision"))
    # a deployment refuses it before any node process starts
    with pytest.raises(UnsupportedModelError, match="demo-vision is a vision model"):
        deploy_local(str(lm), pki, None, image_models={Tier.CLOUD: "demo-vision"})
    # and the command line says so on one line
    code, _, err = cli(
        capsys, monkeypatch, "node", "--tier", "edge", "--model", str(lm), "--certs", str(pki),
        "--image-model", "demo-vision",
    )
    assert_one_line_error(code, err, "demo-vision is a vision model, not an image generator")
    monkeypatch.setenv("TIERFLOW_HOME", str(tmp_path / "home"))
    code, _, err = cli(
        capsys, monkeypatch, "up", "demo-lm", "--certs", str(tmp_path / "pki"), "--store",
        str(tmp_path / "contexts.sqlite"), "--image-model", str(lm),
    )
    assert_one_line_error(code, err, "is a causal-lm model, not an image generator")
    assert not (tmp_path / "pki").exists()  # refused before anything was started


def pixels_of(reply: StageResponse) -> np.ndarray:
    """A ``generate_image`` reply's image (it travels as PNG bytes)."""
    return read_png(tensor_bytes(reply.outputs[IMAGE_PNG], "the reply"), "the reply")


def test_an_edit_crosses_the_data_plane_exactly_and_a_bad_picture_is_refused(pki: Path, lm: Path) -> None:
    scene = render(parse_prompt("a blue car on a road").scene, 64, seed=3)
    car = scene.object_ids == 1
    inputs = edit_inputs(ImageEdit(scene.image, car))
    # a picture and its mask as PNG are several times smaller than the raw pixels
    assert inputs[EDIT_IMAGE].nbytes + inputs[EDIT_MASK].nbytes < (scene.image.nbytes + car.size) / 2
    meta = {"prompt": "a red car on a road", "resolution": 64, "seed": 7}

    async def body(node: NodeServer, peers: PeerClients) -> None:
        made = pixels_of(await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, inputs=inputs, meta=meta)))
        kept = ~touched(car, 64)
        assert kept.any() and np.array_equal(made[kept], scene.image[kept])  # the picture arrived exactly
        assert not np.array_equal(made[car], scene.image[car])  # and the car was repainted
        raw = {EDIT_IMAGE: scene.image}  # pixels, not PNG bytes
        with pytest.raises(InvalidInputError, match="the edit's picture: expected a 1-D uint8 tensor"):
            await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, inputs=raw, meta=meta))
        junk = {EDIT_IMAGE: np.frombuffer(b"GIF89a not a png", np.uint8).copy()}
        with pytest.raises(InvalidInputError, match="the edit's picture: not a readable PNG"):
            await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, inputs=junk, meta=meta))
        small = {EDIT_IMAGE: inputs[EDIT_IMAGE], EDIT_MASK: png_tensor(np.zeros((32, 32), np.uint8))}
        with pytest.raises(InvalidInputError, match=r"the edit's mask is \(32, 32\), its picture \(64, 64\)"):
            await peers.call("cloud", StageRequest(OP_GENERATE_IMAGE, inputs=small, meta=meta))

    with_node(pki, body, model=str(lm), image_model="demo-image")
