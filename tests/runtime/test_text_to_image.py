"""The bundled text-to-image pipeline (demo-image): one graph from the trained components, run
stage by stage; prompts it follows, edits that keep what is outside the mask, targets cut from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tierflow.bench.images import SEED_BASE, spread, to_64
from tierflow.compiler.compiler import compile_model
from tierflow.compiler.image_quality import CLASSIFIER, adherence_prompts, score
from tierflow.errors import InvalidInputError
from tierflow.model import text_to_image as t2i
from tierflow.model.package import Package
from tierflow.model.pyramid import pyramid_from_dict
from tierflow.model.scenes import parse_prompt, render
from tierflow.runtime.session import SessionOptions, open_session
from tierflow.runtime.text_to_image import PipelineGenerator, dilate, open_generator, touched


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("t2i") / "demo-image.onnx"
    t2i.build(path)
    return path


@pytest.fixture(scope="module")
def generator(pipeline_file: Path) -> PipelineGenerator:
    model = onnx.load(str(pipeline_file))
    gen = open_generator(open_session(pipeline_file, SessionOptions(intra_op_threads=1)), model)
    assert isinstance(gen, PipelineGenerator)
    return gen


def test_parameter_groups_are_the_components_own_weights(pipeline_file: Path) -> None:
    model = onnx.load(str(pipeline_file))
    own = {name: t2i.parameters(c.model) for name, c in t2i.load_components().items()}
    inlined: dict[str, int] = {}
    for t in model.graph.initializer:
        head = t.name.split("/", 1)[0]
        if head in own and t.data_type == onnx.TensorProto.FLOAT:
            inlined[head] = inlined.get(head, 0) + int(np.prod(t.dims))
    # every step and every upsampling level shares one copy of its component's weights
    assert inlined == own
    trained = json.loads((t2i.ASSET_DIR / "training.json").read_text())["parameters"]
    for name in ("text_encoder", "denoiser"):  # what training counted (the file adds folded constants)
        assert trained[name] <= own[name] < trained[name] * 1.01
    base = sum(own[c] for c in t2i.BASE_COMPONENTS)
    assert 0.05 < own["up2x"] / base < 0.2  # the edge layers: about +10 %
    assert 1.5 < own["refiner"] / base < 3.0  # the cloud layers: about +200 %


def test_each_resolution_runs_only_its_own_chain(generator: PipelineGenerator) -> None:
    small = generator.generate("a red car on a road", 64, seed=3)
    assert small.pixels.shape == (64, 64, 3) and [s for s, _ in small.stages] == ["sampler"]
    large = generator.generate("a red car on a road", 512, seed=3)
    assert large.pixels.shape == (512, 512, 3)
    assert [s for s, _ in large.stages] == ["sampler", "up256", "up512"]
    refined = generator.generate("a red car on a road", 256, refine=True, seed=3)
    assert [s for s, _ in refined.stages] == ["sampler", "refiner"]
    between = generator.generate("a red car on a road", 200, seed=3)
    assert between.pixels.shape == (200, 200, 3)
    # the same seed gives the same base image whatever the resolution asked for
    from PIL import Image

    down = np.asarray(Image.fromarray(large.pixels).resize((64, 64), Image.Resampling.BOX), np.int16)
    assert np.abs(down - small.pixels.astype(np.int16)).mean() < 6.0
    again = generator.generate("a red car on a road", 64, seed=3)
    assert np.array_equal(again.pixels, small.pixels)
    other = generator.generate("a red car on a road", 64, seed=4)
    assert not np.array_equal(other.pixels, small.pixels)


def test_unknown_words_are_reported_and_ignored(generator: PipelineGenerator) -> None:
    plain = generator.generate("a red car on a road", 64, seed=5)
    noisy = generator.generate("a shiny red car on a road please", 64, seed=5)
    assert noisy.ignored_words == ("shiny", "please")
    assert np.array_equal(plain.pixels, noisy.pixels)


def test_images_follow_their_prompts_far_above_chance(generator: PipelineGenerator) -> None:
    prompts = spread(adherence_prompts(), 12)  # every kind, several colours and positions
    made = [generator.generate(p, 256, seed=SEED_BASE + i).pixels for i, p in enumerate(prompts)]
    images = np.stack([to_64(m) for m in made])
    report = score(images, prompts, CLASSIFIER)
    # chance: 0.11 for the colour, 0.125 for the kind (docs/MODELS.md has the full figures)
    assert report["colour"] >= 0.75, report
    assert report["kind"] >= 0.35, report


def test_an_edit_repaints_the_mask_and_keeps_the_rest(generator: PipelineGenerator) -> None:
    scene = parse_prompt("a blue car on a road").scene
    frame = render(scene, 256, seed=7)
    car = frame.object_ids == 1
    edited = generator.edit("a red car on a road", frame.image, car, strength=0.9, seed=1)
    # outside the mask grown by the feather band (a few pixels), the caller's pixels exactly
    grown = touched(car, 256)
    assert grown.sum() - car.sum() < 0.05 * car.size  # a band of 8 px at 256
    assert np.array_equal(edited.pixels[~grown], frame.image[~grown])
    before = frame.image[car].astype(float).mean(axis=0)
    after = edited.pixels[car].astype(float).mean(axis=0)
    assert after[0] - after[2] > before[0] - before[2] + 60  # the car went from blue to red


def test_a_masked_edit_repaints_anew_by_default_and_a_whole_picture_edit_keeps_its_layout(
    generator: PipelineGenerator,
) -> None:
    frame = render(parse_prompt("a blue car on a road").scene, 64, seed=7)
    car = frame.object_ids == 1
    prompt = "a red car on a road"

    def edit(mask: np.ndarray | None, strength: float | None) -> np.ndarray:
        return generator.edit(prompt, frame.image, mask, strength, seed=3).pixels

    assert np.array_equal(edit(car, None), edit(car, 1.0))
    assert np.array_equal(edit(None, None), edit(None, 0.8))
    assert not np.array_equal(edit(None, None), edit(None, 1.0))


def test_bad_edits_are_refused(generator: PipelineGenerator) -> None:
    frame = np.zeros((128, 128, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="square"):
        generator.edit("a red car", np.zeros((64, 32, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="no pixel"):
        generator.edit("a red car", frame, np.zeros((128, 128), bool))
    with pytest.raises(InvalidInputError, match="mask is"):
        generator.edit("a red car", frame, np.ones((64, 64), bool))
    with pytest.raises(InvalidInputError, match="strength"):
        generator.edit("a red car", frame, strength=0.0)
    with pytest.raises(InvalidInputError, match="out of range"):
        generator.generate("a red car", 4096)


def test_the_phone_target_takes_the_few_step_sampler_to_256(pipeline_file: Path, tmp_path: Path) -> None:
    config = pyramid_from_dict({"fidelity": {"samples": 1, "calibration_samples": 2}})
    report = compile_model(pipeline_file, tmp_path / "p.tfm", config=config, targets=["phone"])
    spec = report.targets[0].spec
    assert spec.outputs == [t2i.image_output(64), t2i.image_output(256)]
    assert spec.layers == list(t2i.BASE_COMPONENTS)
    assert report.manifest is not None and report.manifest.cloud_layers.components == ["refiner"]
    data = Package.open(tmp_path / "p.tfm").artifact("phone")
    session = open_session(data, SessionOptions(intra_op_threads=1))
    phone = open_generator(session, onnx.load_from_string(data))
    assert isinstance(phone, PipelineGenerator) and phone.steps == t2i.FAST_STEPS and not phone.has_refiner
    assert phone.generate("a red car on a road", 256, seed=0).pixels.shape == (256, 256, 3)
    with pytest.raises(InvalidInputError, match="refiner"):
        phone.generate("a red car on a road", 256, refine=True, seed=0)
    with pytest.raises(InvalidInputError, match="out of range"):
        phone.generate("a red car on a road", 512, seed=0)


@pytest.mark.parametrize(("side", "radius"), [(64, 1), (256, 4), (300, 7), (40, 60)])
def test_dilate_is_a_square_max_filter(side: int, radius: int) -> None:
    from PIL import Image, ImageFilter

    mask = np.random.default_rng(side).random((side, side)) > 0.99
    mask[0, 0] = mask[-1, -1] = True  # the borders too
    binary = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    expected = np.asarray(binary.filter(ImageFilter.MaxFilter(2 * min(radius, side) + 1))) > 0
    np.testing.assert_array_equal(dilate(mask, radius), expected)
    assert not dilate(np.zeros((side, side), bool), radius).any()
