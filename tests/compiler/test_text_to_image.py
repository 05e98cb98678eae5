"""The text-to-image model: training prompts, a tiny training run exported to ONNX and sampled by
ONNX Runtime, repeatability, the adherence measure, and the bundled model when it is there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from tierflow.compiler import image_quality as iq  # noqa: E402
from tierflow.compiler import train_scene_classifier as tsc  # noqa: E402
from tierflow.compiler import train_text_to_image as tti  # noqa: E402
from tierflow.model import metadata as md  # noqa: E402
from tierflow.model.scenes import PAD_ID, UNK_ID, VOCABULARY, parse_prompt, prompt_of, random_scene  # noqa: E402
from tierflow.runtime import flow_sampler as fs  # noqa: E402

BUNDLED = fs.DEFAULT_MODEL_DIR


def test_training_prompts_read_back_to_their_scenes() -> None:
    rng = np.random.default_rng(4)
    for _ in range(300):
        scene = random_scene(rng)
        assert tti.describe(scene) == prompt_of(scene)
    varied = 0
    for i in range(200):
        scene, render_seed, prompt = tti.scene_at(tti.TRAIN_STREAM, 0, i)
        assert parse_prompt(prompt).scene == scene
        assert (scene, render_seed, prompt) == tti.scene_at(tti.TRAIN_STREAM, 0, i)
        varied += prompt != prompt_of(scene)
        assert UNK_ID not in tti.token_ids(prompt)
    assert 30 < varied < 130


def test_the_scene_pool_draws_fresh_scenes() -> None:
    pool = tti.ScenePool(seed=0, size=4, fresh=2)
    assert pool.rendered == 4
    images, tokens = pool.draw(3)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert tokens.shape == (3, 48) and tokens.dtype == np.int64 and (tokens[:, 0] != PAD_ID).all()
    assert pool.rendered == 6


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t2i")
    tti.main(["--out", str(out), "--steps", "3", "--batch", "2", "--pool", "4", "--log-every", "1"])
    return out


def test_a_tiny_training_run_exports_components_the_sampler_runs(tiny_run: Path) -> None:
    for name, inputs, outputs in (
        (fs.TEXT_ENCODER_FILE, [fs.TOKENS], list(fs.TEXT_OUTPUTS)),
        (fs.DENOISER_FILE, list(fs.DENOISER_INPUTS), [fs.VELOCITY]),
    ):
        proto = onnx.load(str(tiny_run / name))
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version == 17
        assert [i.name for i in proto.graph.input] == inputs
        assert [o.name for o in proto.graph.output] == outputs
        config = json.loads(md.props(proto)[md.CONFIG])
        assert config["component"] == name.removesuffix(".onnx") and config["resolution"] == 64
        assert json.loads(md.props(proto)[md.TRAINING])["steps"] == 3
    assert json.loads(md.props(onnx.load(str(tiny_run / fs.TEXT_ENCODER_FILE)))[md.CONFIG])[
        "vocabulary"
    ] == list(VOCABULARY)
    run = json.loads((tiny_run / tti.TRAINING_FILE).read_text())
    assert run["seed"] == 0 and run["steps"] == 3 and run["loss_curve"][-1]["step"] == 3
    assert run["parameters"]["total"] == run["parameters"]["text_encoder"] + run["parameters"]["denoiser"]
    assert run["onnx_max_abs_error"] < 1e-3 and run["wall_s"] > 0
    assert (tiny_run / tti.CHECKPOINT_FILE).is_file()

    sampler = fs.FlowSampler.open(tiny_run)
    image = sampler.sample("a red car on a road at night", seed=1, steps=3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, sampler.sample("a red car on a road at night", seed=1, steps=3))
    assert not np.array_equal(image, sampler.sample("a red car on a road at night", seed=2, steps=3))
    empty = sampler.sample("", seed=1, steps=2, guidance=5.0)  # the guidance path with no text
    assert empty.shape == (64, 64, 3)
    odd = sampler.sample("a red zorblax car on a road", seed=1, steps=2)  # unknown words are dropped
    assert np.array_equal(odd, sampler.sample("a red car on a road", seed=1, steps=2))


def test_the_checkpoint_exports_the_same_model(tiny_run: Path, tmp_path: Path) -> None:
    tti.main(["--out", str(tmp_path), "--export-only", str(tiny_run / tti.CHECKPOINT_FILE)])
    a = fs.FlowSampler.open(tiny_run).sample("a blue ball", seed=3, steps=2)
    b = fs.FlowSampler.open(tmp_path).sample("a blue ball", seed=3, steps=2)
    assert np.array_equal(a, b)


def test_training_is_repeatable_for_a_seed() -> None:
    a, ema_a, _ = tti.train(steps=2, batch=2, seed=1, log_every=0, pool=4)
    b, _, _ = tti.train(steps=2, batch=2, seed=1, log_every=0, pool=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.state_dict()["denoiser.stem.weight"], ema_a.state_dict()["denoiser.stem.weight"])
    counts = tti.parameter_counts(a)
    assert counts["total"] < 4_000_000 and counts["text_encoder"] < counts["denoiser"]


def test_adherence_scores_generated_images_with_the_classifier(tiny_run: Path, tmp_path: Path) -> None:
    prompts = iq.adherence_prompts()
    assert len(prompts) == len(set(prompts)) == 144
    kinds = {parse_prompt(p).scene.main.kind for p in prompts}
    colours = {parse_prompt(p).scene.main.colour for p in prompts}
    assert len(kinds) == 8 and len(colours) == 9
    classifier, _ = tsc.train(2, batch=4, log_every=0)
    path = tmp_path / "classifier.onnx"
    tsc.export_onnx(classifier, path)
    report = iq.adherence(tiny_run, path, steps=2, prompts=prompts[:6])
    for key in ("kind", "colour", "position", "all", "all_day", "all_night"):
        assert 0.0 <= report[key] <= 1.0
    assert report["n"] == 6 and report["steps"] == 2
    assert report["all"] <= min(report["kind"], report["colour"], report["position"])
    reference = iq.reference_adherence(path, prompts[:6])
    assert reference["n"] == 6
    grid = iq.grid(np.zeros((5, 64, 64, 3), np.uint8), ["a"] * 5, cols=4, scale=2)
    assert grid.shape[2] == 3 and grid.shape[1] == 4 * (128 + 4)


def test_the_bundled_model_draws_what_prompts_ask_for() -> None:
    sizes = sum((BUNDLED / f).stat().st_size for f in (fs.TEXT_ENCODER_FILE, fs.DENOISER_FILE))
    assert sizes < 12_000_000
    prompts = iq.adherence_prompts()[::9]  # 16 prompts, every kind
    report = iq.adherence(None, iq.CLASSIFIER, steps=8, prompts=prompts)
    # measured on these 16 prompts: kind 0.44, colour 0.81 (chance: 0.125 and 0.11); the renderer's
    # own images score 1.0. Position (0.25, chance 0.33) is not learned yet, so it is not asserted.
    assert report["kind"] >= 0.3 and report["colour"] >= 0.6, report
