"""The crack detector of the inspection scenario: the shipped edge and cloud models find cracks on
held-out renders (and a random-weight copy does not), the runtime's input checks, a file that is
not a detector, the evaluation figures, and a tiny training run's export contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tierflow.compiler import train_crack_detector as tcd
from tierflow.engine.inspection import ESCALATE_BELOW
from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.model import metadata as md
from tierflow.model.registry import ASSETS
from tierflow.model.scenes import CRACKABLE, Background, Colour, Kind, Lighting, Scene, SceneObject, render
from tierflow.model.scenes.camera import (
    apply_camera,
    camera_frame,
    draw_settings,
    faint_crack,
    inspection_frame,
)
from tierflow.runtime.crack_detector import PROB, SCORE, Box, CrackDetector, box_of
from tierflow.types.models import ModelKind

EDGE = ASSETS / "crack_edge.onnx"
CLOUD = ASSETS / "crack_cloud.onnx"
TEST_SEED = 4242  # a held-out seed of its own: stream [1, 4242, i], never trained on (stream 0)
PER_CLASS = 10
EVIDENCE = 8  # of 10 per class: far above what a detector without skill reaches on both classes
FRAME = 256  # the camera frame: the cloud reads it as it is, the edge box-filters it to 128


def heldout(cracked: bool, count: int = PER_CLASS, size: int = FRAME) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``count`` held-out renders (image, crack mask) that are cracked or not."""
    found: list[tuple[np.ndarray, np.ndarray]] = []
    index = 0
    while len(found) < count:
        images, masks, labels, _ = tcd.render_batch(tcd.HELDOUT_STREAM, TEST_SEED, index, 1, size)
        if bool(labels[0]) == cracked:
            found.append((images[0], masks[0]))
        index += 1
    return found


def boxes_overlap(a: Box | None, b: Box | None) -> bool:
    return a is not None and b is not None and tcd.boxes_overlap(a, b)


def skill(detector: CrackDetector) -> tuple[int, int]:
    """Cracked renders found with a box on the true crack, and uncracked renders left alone."""
    cracked, clean = heldout(True), heldout(False)
    found = detector.detect_batch([image for image, _ in cracked])
    hits = sum(
        d.cracked and boxes_overlap(d.box, box_of(mask)) for d, (_, mask) in zip(found, cracked, strict=True)
    )
    quiet = sum(not d.cracked for d in detector.detect_batch([image for image, _ in clean]))
    return hits, quiet


def committed(path: Path) -> Path:
    # the trained detectors are committed (model/assets): missing, it is a broken checkout, not a skip
    assert path.is_file(), f"committed asset missing: {path}"
    assert path.stat().st_size > 50_000, f"committed asset truncated (a Git LFS pointer?): {path}"
    return path


@pytest.mark.parametrize("path", [EDGE, CLOUD], ids=["edge", "cloud"])
def test_shipped_detector_finds_cracks_and_leaves_clean_surfaces_alone(path: Path) -> None:
    detector = CrackDetector.open(committed(path))
    hits, quiet = skill(detector)
    assert hits >= EVIDENCE, f"{path.name}: found and boxed {hits} of {PER_CLASS} cracks"
    assert quiet >= EVIDENCE, f"{path.name}: {PER_CLASS - quiet} of {PER_CLASS} clean renders called cracked"


def test_a_random_weight_copy_has_no_skill(tmp_path: Path) -> None:
    proto = onnx.load(str(committed(EDGE)))
    rng = np.random.default_rng(0)
    for init in proto.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.float32 and weights.size > 1:  # shapes and scalars stay as they are
            noise = rng.normal(0.0, float(weights.std()) or 0.1, weights.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noise, init.name))
    random_copy = tmp_path / "random.onnx"
    onnx.save(proto, str(random_copy))
    hits, quiet = skill(CrackDetector.open(random_copy))
    assert hits < EVIDENCE or quiet < EVIDENCE, (hits, quiet)


def test_detection_fields_any_size_and_batches() -> None:
    detector = CrackDetector.open(committed(EDGE))
    assert detector.variant == "edge" and detector.size == 128
    ((image, mask),) = heldout(True, 1)  # a 256 px frame: resized (box filter) to 128
    found = detector.detect(image)
    assert found.cracked and 0.5 <= found.score <= 1 and 0.5 <= found.confidence <= 1
    assert found.mask.shape == (128, 128) and found.mask.dtype == np.bool_ and found.mask.any()
    assert found.box is not None and boxes_overlap(found.box, box_of(mask))
    assert found.elapsed_s > 0 and found.variant == "edge"
    ((clean, _),) = heldout(False, 1)
    batch = detector.detect_batch([clean, image, clean[:100, :90]])
    assert [d.cracked for d in batch[:2]] == [False, True]
    assert batch[0].box is None and not batch[0].mask.any()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
        [[0, 0, 0]],
    ],
    ids=["float", "grey", "rgba", "empty", "list"],
)
def test_bad_input_is_an_invalid_input_error(bad: object) -> None:
    detector = CrackDetector.open(committed(EDGE))
    with pytest.raises(InvalidInputError, match="pixels must"):
        detector.detect(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        detector.detect_batch([])


def test_a_file_that_is_not_a_detector_is_unsupported(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 128, 128])
    y = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 3, 128, 128])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "identity", [x], [y])
    other = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(other))
    with pytest.raises(UnsupportedModelError, match="not a crack detector"):
        CrackDetector.open(other)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx" * 20)
    with pytest.raises(UnsupportedModelError):
        CrackDetector.open(garbage)
    # a detector's metadata on the wrong graph: the signature check catches it
    proto = onnx.load(str(other))
    md.write_metadata(proto, input_size=128, config={"kind": "crack-detector", "variant": "edge"})
    onnx.save(proto, str(other))
    with pytest.raises(UnsupportedModelError, match=PROB):
        CrackDetector.open(other)


def test_held_out_streams_and_evaluation_figures() -> None:
    train = {repr(tcd.scene_at(tcd.TRAIN_STREAM, 0, i)) for i in range(200)}
    held = {repr(tcd.scene_at(tcd.HELDOUT_STREAM, 0, i)) for i in range(200)}
    assert not train & held
    assert all(tcd.scene_at(tcd.HELDOUT_STREAM, 0, i)[0].main.kind in CRACKABLE for i in range(200))
    report = tcd.evaluate(committed(EDGE), n=40, seed=TEST_SEED)
    assert report["accuracy"] is not None and report["accuracy"] >= 0.85
    assert report["box_hit_rate"] is not None and report["box_hit_rate"] >= 0.8
    assert report["iou"] is not None and report["iou"] > 0.2
    esc = tcd.escalation(committed(EDGE), committed(CLOUD), n=40, seed=TEST_SEED, share=0.1)
    assert esc["closed_at_edge"] == pytest.approx(0.9)
    assert esc["accuracy_escalated"] >= esc["accuracy_edge"] - 0.05


def test_training_batches_whole_frames_and_crops() -> None:
    edge, cloud = tcd.VARIANTS["edge"], tcd.VARIANTS["cloud"]
    images, masks, labels = tcd.training_batch(edge, 0, 0, 6)
    assert images.shape == (6, 128, 128, 3) and masks.shape == (6, 128, 128)
    assert labels.tolist() == masks.any(axis=(1, 2)).tolist()
    images, masks, labels = tcd.training_batch(cloud, 0, 0, 8)  # two renders, four crops each
    assert images.shape == (8, cloud.crop, cloud.crop, 3) and masks.shape == (8, cloud.crop, cloud.crop)
    assert labels.tolist() == masks.any(axis=(1, 2)).tolist()
    again, _, _ = tcd.training_batch(cloud, 0, 0, 8)
    assert np.array_equal(images, again)  # the run repeats exactly


def test_auroc_and_summary_counts() -> None:
    wrong = np.array([True, False, False, True])
    assert tcd.auroc(wrong, np.array([0.9, 0.1, 0.2, 0.8])) == 1.0
    assert tcd.auroc(wrong, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert tcd.auroc(np.array([False, False]), np.array([0.1, 0.2])) is None


def test_shipped_metadata() -> None:
    for path, variant in ((EDGE, "edge"), (CLOUD, "cloud")):
        proto = onnx.load(str(committed(path)))
        config = md.config(proto)
        assert config["kind"] == "crack-detector" and config["variant"] == variant
        assert (
            md.kind(proto) is ModelKind.VISION
            and md.input_size(proto) == {"edge": 128, "cloud": 256}[variant]
        )
        training = json.loads(md.props(proto)[md.TRAINING])
        assert training["heldout"]["accuracy"] >= 0.9 and training["parameters"] > 0
        assert path.stat().st_size < 5_000_000


@pytest.mark.export
def test_a_tiny_training_run_exports_the_detector_contract(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "crack.onnx"
    tcd.main(["--variant", "edge", "--out", str(out), "--steps", "3", "--batch", "4", "--eval", "10"])
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == [PROB, SCORE]
    training = json.loads(md.props(proto)[md.TRAINING])
    assert training["steps"] == 3 and set(training["heldout"]) >= {"precision", "recall", "iou"}
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["training"]["steps"] == 3 and log["log"][-1]["step"] == 3
    detector = CrackDetector.open(out)
    prob, score = detector.probabilities(heldout(True, 1, size=128)[0][0][None])
    assert prob.shape == (1, 128, 128) and score.shape == (1,) and 0 <= float(score[0]) <= 1


def test_the_simulated_camera_is_deterministic_and_leaves_the_render_alone() -> None:
    scene, render_seed = tcd.scene_at(tcd.HELDOUT_STREAM, TEST_SEED, 0)
    clean = render(scene, FRAME, render_seed).image
    before = clean.copy()
    a = camera_frame(clean, np.random.default_rng(7))
    assert a.shape == clean.shape and a.dtype == np.uint8
    assert np.array_equal(a, camera_frame(clean, np.random.default_rng(7)))  # the same draws, the same frame
    assert not np.array_equal(a, camera_frame(clean, np.random.default_rng(8)))
    assert np.array_equal(clean, before)  # the render is not written to
    assert 1.0 < np.abs(a.astype(np.float64) - clean).mean() < 40.0  # changed, still the same picture
    with pytest.raises(InvalidInputError):
        camera_frame(clean.astype(np.float32), np.random.default_rng(0))  # type: ignore[arg-type]


def test_night_frames_are_noisier_than_day_frames() -> None:
    """Auto-exposure raises the gain in low light, and the sensor noise with it: the noise left in
    a frame (the camera frame minus the same frame without noise) is larger at night."""
    quiet = dataclasses.replace(draw_settings(np.random.default_rng(0)), shot=0.0, read=0.0)
    noisy = dataclasses.replace(quiet, shot=0.0006, read=0.002)
    noise = {}
    for lighting in (Lighting.DAY, Lighting.NIGHT):
        scene = Scene((SceneObject(Kind.WALL, Colour.WHITE),), Background.GRASS, lighting)
        image = render(scene, FRAME, 1).image
        with_noise = apply_camera(image, noisy, np.random.default_rng(1)).astype(np.float64)
        noise[lighting] = float(np.std(with_noise - apply_camera(image, quiet, np.random.default_rng(1))))
    assert noise[Lighting.NIGHT] > 2 * noise[Lighting.DAY] > 0


def test_a_faint_crack_keeps_a_share_of_its_ink() -> None:
    scene = Scene((SceneObject(Kind.WALL, Colour.WHITE),), Background.GRASS, crack=True)
    cracked = render(scene, FRAME, 3).image
    plain = render(dataclasses.replace(scene, crack=False), FRAME, 3).image
    ink = np.abs(cracked.astype(np.float64) - plain).sum()
    assert ink > 0  # the two renders differ in the crack alone
    assert np.array_equal(faint_crack(cracked, plain, 1.0), cracked)
    assert np.array_equal(faint_crack(cracked, plain, 0.0), plain)
    half = np.abs(faint_crack(cracked, plain, 0.5).astype(np.float64) - plain).sum()
    assert 0.45 * ink < half < 0.55 * ink
    frame = inspection_frame(scene, FRAME, 3, np.random.default_rng(0))
    assert np.array_equal(frame.crack_mask, render(scene, FRAME, 3).crack_mask)  # the render's labels


def test_the_default_escalation_threshold_is_the_endpoints() -> None:
    assert tcd.ESCALATE_BELOW == ESCALATE_BELOW


def test_sign_test() -> None:
    assert tcd.sign_test(0, 0) == 1.0
    assert tcd.sign_test(5, 5) == 1.0
    assert tcd.sign_test(10, 0) == pytest.approx(2 / 1024)
    assert tcd.sign_test(0, 10) == tcd.sign_test(10, 0)
