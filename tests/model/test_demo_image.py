"""random-image: the built graph, its cost, and driving it with ImageGenerator and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from tierflow.cli import app
from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.model.demo import image as demo_image
from tierflow.model.onnx_build import count_macs, node_macs, parameter_count, with_input_shapes
from tierflow.runtime.image import ImageGenerator, encode_prompt, to_uint8
from tierflow.runtime.session import SessionOptions, open_session

ONE_THREAD = SessionOptions(intra_op_threads=1)


def latent(resolution: int) -> dict[str, list[int]]:
    side = resolution // demo_image.LATENT_FACTOR
    return {"noise": [1, demo_image.LATENT_CHANNELS, side, side]}


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return demo_image.build_model()


@pytest.fixture(scope="module")
def generator(model: onnx.ModelProto) -> ImageGenerator:
    return ImageGenerator.open(model.SerializeToString(), ONE_THREAD)


# --- the graph ------------------------------------------------------------------------


def test_build_is_deterministic_and_a_few_mb(tmp_path: Path) -> None:
    demo_image.build(tmp_path / "a.onnx")
    demo_image.build(tmp_path / "b.onnx")
    data = (tmp_path / "a.onnx").read_bytes()
    assert data == (tmp_path / "b.onnx").read_bytes()
    assert 1_000_000 < len(data) < 8_000_000
    assert demo_image.build_model(seed=1).SerializeToString() != demo_image.build_model().SerializeToString()


def test_passes_the_full_checker_and_infers_output_shapes(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    inferred = with_input_shapes(model, latent(512))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.output}
    assert shapes == {"image": [1, 3, 512, 512], "refined_image": [1, 3, 512, 512]}


def test_metadata(model: onnx.ModelProto) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tierflow.kind"] == "image-generator"
    assert meta["tierflow.latent_factor"] == "8"
    assert meta["tierflow.cond_dim"] == "64"
    assert meta["tierflow.resolutions"] == "256,512,1024,2048"
    assert meta["tierflow.refiner_output"] == "refined_image"
    blocks = json.loads(meta["tierflow.blocks"])
    assert blocks[0] == "stem/out" and blocks[-2:] == ["image", "refined_image"]
    # every boundary is a node output, listed in graph (topological) order
    produced_at = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    positions = [produced_at[b] for b in blocks]
    assert positions == sorted(positions)


def test_node_names_are_prefixed_by_block(model: onnx.ModelProto) -> None:
    prefixes = {node.name.split("/")[0] for node in model.graph.node}
    expected = {"mapping", "stem", "to_rgb", "refiner"}
    expected |= {f"gen_block{k}" for k in range(demo_image.GEN_BLOCKS)} | {"up1", "up2", "up3"}
    assert prefixes == expected
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)


def test_compute_grows_with_pixels(model: onnx.ModelProto) -> None:
    macs = {r: count_macs(model, latent(r)) for r in (256, 512, 1024, 2048)}
    for r in (512, 1024, 2048):
        # everything spatial scales with H*W; only the tiny style MLP does not
        assert macs[r] / macs[256] == pytest.approx((r / 256) ** 2, rel=0.01)
    per_node = node_macs(model, latent(256))
    refiner = sum(v for k, v in per_node.items() if k.startswith("refiner/"))
    assert 0.1 < refiner / macs[256] < 0.5  # the refiner is a real but minor extra stage
    assert macs[256] < 2e9  # phone-sized at 256 px


def test_weights_sit_mostly_in_the_generator(model: onnx.ModelProto) -> None:
    total = parameter_count(model)
    generator = parameter_count(model, [f"gen_block{k}/" for k in range(demo_image.GEN_BLOCKS)])
    assert generator / total > 0.5


# --- running it -----------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [256, 512])
def test_output_shape_follows_resolution(generator: ImageGenerator, resolution: int) -> None:
    noise = np.random.default_rng(0).standard_normal(latent(resolution)["noise"], dtype=np.float32)
    image, refined = generator.session.run(None, {"noise": noise, "cond": encode_prompt("a red car")})
    assert image.shape == refined.shape == (1, 3, resolution, resolution)
    assert image.min() >= -1 and image.max() <= 1 and refined.min() >= -1 and refined.max() <= 1
    assert image.std() > 0.1  # a picture, not a flat field
    assert np.abs(refined - image).mean() > 0.02  # the refiner changes the picture


def test_generate_is_reproducible_and_conditioned(generator: ImageGenerator) -> None:
    first = generator.generate("a red car", 256, seed=7)
    again = generator.generate("a red car", 256, seed=7)
    assert first.pixels.shape == (256, 256, 3) and first.pixels.dtype == np.uint8
    assert (first.width, first.height, first.seed, first.refined) == (256, 256, 7, False)
    assert first.provider == "CPUExecutionProvider" and first.elapsed_s > 0
    np.testing.assert_array_equal(first.pixels, again.pixels)
    other_prompt = generator.generate("a blue sky over the sea", 256, seed=7)
    other_seed = generator.generate("a red car", 256, seed=8)
    unconditioned = generator.generate(None, 256, seed=7)
    for other in (other_prompt, other_seed, unconditioned):
        assert np.abs(other.pixels.astype(int) - first.pixels).mean() > 5
    refined = generator.generate("a red car", 256, refine=True, seed=7)
    assert refined.refined and np.abs(refined.pixels.astype(int) - first.pixels).mean() > 2


def test_unrefined_images_skip_the_refiner(model: onnx.ModelProto, generator: ImageGenerator) -> None:
    # ORT runs every node of a graph, so an unrefined image runs a graph cut before the refiner
    base = generator.session_for(refine=False)
    assert [o.name for o in base.get_outputs()] == ["image"]
    assert generator.session_for(refine=True) is generator.session
    direct = ImageGenerator(open_session(model.SerializeToString(), ONE_THREAD))  # no model: one session
    assert direct.session_for(refine=False) is direct.session
    same = direct.generate("a", 64, seed=2).pixels
    np.testing.assert_array_equal(same, generator.generate("a", 64, seed=2).pixels)


def test_random_seed_is_reported(generator: ImageGenerator) -> None:
    result = generator.generate("x", 64)
    np.testing.assert_array_equal(generator.generate("x", 64, seed=result.seed).pixels, result.pixels)


@pytest.mark.parametrize("resolution", [100, 32, 8192, 0, -256, True, 256.0])
def test_bad_resolution_is_a_typed_error(generator: ImageGenerator, resolution: object) -> None:
    with pytest.raises(InvalidInputError):
        generator.generate("a red car", resolution)  # type: ignore[arg-type]


def test_png_round_trip(generator: ImageGenerator, tmp_path: Path) -> None:
    result = generator.generate("a red car", 64, seed=1)
    path = result.save(tmp_path / "car.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (64, 64)
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), result.pixels)
    with pytest.raises(InvalidInputError, match="cannot write"):
        result.save(tmp_path / "no" / "such" / "dir.png")


def test_a_generator_without_refiner(model: onnx.ModelProto) -> None:
    # what a trimmed phone target looks like: the graph up to `image` only
    base = onnx.utils.Extractor(model).extract_model(["noise", "cond"], ["image"])
    assert not any(n.name.startswith("refiner/") for n in base.graph.node)
    generator = ImageGenerator.open(base.SerializeToString(), ONE_THREAD)
    assert not generator.has_refiner
    assert generator.generate("a", 64, seed=0).pixels.shape == (64, 64, 3)
    with pytest.raises(InvalidInputError, match="no refiner"):
        generator.generate("a", 64, refine=True, seed=0)


def test_not_an_image_generator() -> None:
    from tierflow.model.demo import vision

    with pytest.raises(UnsupportedModelError):
        ImageGenerator.open(vision.build_model().SerializeToString(), ONE_THREAD)


# --- the text-encoder stand-in ------------------------------------------------------------


def test_encode_prompt() -> None:
    car = encode_prompt("A red car")
    assert car.shape == (1, 64) and car.dtype == np.float32
    np.testing.assert_array_equal(car, encode_prompt("a  red car!"))  # case, spacing, punctuation
    assert car.std() == pytest.approx(1.0, abs=0.2)
    assert not encode_prompt(None).any() and not encode_prompt("  ").any()

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b.T).item() / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(car, encode_prompt("a red truck")) > cos(car, encode_prompt("quantum physics lecture")) + 0.2
    assert encode_prompt("a red car", dim=16).shape == (1, 16)


def test_to_uint8_maps_the_range() -> None:
    x = np.array([-1.0, 0.0, 1.0, 2.0], np.float32).reshape(1, 1, 1, 4).repeat(3, axis=1)
    assert to_uint8(x)[0, :, 0].tolist() == [0, 128, 255, 255]


# --- the CLI --------------------------------------------------------------------------


def test_cli_run_demo_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = tmp_path / "X.png"
    result = runner.invoke(app, ["run", "random-image", "--prompt", "a red car", "-r", "256", "-o", str(out),
                                 "--seed", "3", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "provider=CPU" in result.output and "256x256" in result.output
    with Image.open(out) as img:
        assert img.size == (256, 256)
    # default output name: <model>-<resolution>.png in the working directory, here with the refiner
    result = runner.invoke(app, ["run", "random-image", "-r", "64", "--refine", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "refined=yes" in result.output and (tmp_path / "random-image-64.png").is_file()
    result = runner.invoke(app, ["run", "random-image", "-r", "100"])
    assert isinstance(result.exception, InvalidInputError)

