"""The flow-matching sampler on ONNX Runtime: prompt tokens, the Euler loop, guidance, seeds.

Most tests run a tiny hand-built ONNX pair (no torch); one builds a random-weight model through
the training module when torch is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.model.scenes import MAX_TOKENS, PAD_ID, UNK_ID, VOCABULARY, parse_prompt, tokenize
from tierflow.runtime import flow_sampler as fs
from tierflow.runtime.session import SessionOptions, open_session

DIM = 8


def _tiny_pair(folder: Path) -> Path:
    """A text encoder (embedding, mean pool) and a 'denoiser' whose velocity (towards a colour
    taken from the pooled text, plus small terms in t and the words) depends on x, t and the text,
    with the real contract's names, types and shapes."""
    rng = np.random.default_rng(0)
    table = helper.make_tensor(
        "table",
        TensorProto.FLOAT,
        [len(VOCABULARY), DIM],
        rng.standard_normal((len(VOCABULARY), DIM)).ravel(),
    )
    pad = helper.make_tensor("pad", TensorProto.INT64, [], [PAD_ID])
    enc = helper.make_graph(
        [
            helper.make_node("Gather", ["table", fs.TOKENS], [fs.TEXT]),
            helper.make_node("Equal", [fs.TOKENS, "pad"], ["is_pad"]),
            helper.make_node("Not", ["is_pad"], ["is_word"]),
            helper.make_node("Cast", ["is_word"], [fs.TEXT_MASK], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", [fs.TEXT], [fs.POOLED], axes=[1], keepdims=0),
        ],
        "tiny_text_encoder",
        [helper.make_tensor_value_info(fs.TOKENS, TensorProto.INT64, ["batch", MAX_TOKENS])],
        [
            helper.make_tensor_value_info(fs.TEXT, TensorProto.FLOAT, ["batch", MAX_TOKENS, DIM]),
            helper.make_tensor_value_info(fs.POOLED, TensorProto.FLOAT, ["batch", DIM]),
            helper.make_tensor_value_info(fs.TEXT_MASK, TensorProto.FLOAT, ["batch", MAX_TOKENS]),
        ],
        [table, pad],
    )
    shape4 = helper.make_tensor("shape4", TensorProto.INT64, [4], [-1, 1, 1, 1])
    proj = helper.make_tensor(
        "proj", TensorProto.FLOAT, [DIM, 3], 0.3 * rng.standard_normal((DIM, 3)).ravel()
    )
    shape_c = helper.make_tensor("shape_c", TensorProto.INT64, [4], [-1, 3, 1, 1])
    axis1 = helper.make_tensor("axis1", TensorProto.INT64, [1], [1])
    small = helper.make_tensor("small", TensorProto.FLOAT, [], [0.05])
    den = helper.make_graph(
        [
            helper.make_node("Reshape", [fs.T, "shape4"], ["t4"]),
            helper.make_node("MatMul", [fs.POOLED, "proj"], ["colour"]),
            helper.make_node("Reshape", ["colour", "shape_c"], ["colour4"]),
            helper.make_node("ReduceSum", [fs.TEXT_MASK, "axis1"], ["words"], keepdims=0),
            helper.make_node("ReduceMean", [fs.TEXT], ["text_mean"], axes=[1, 2], keepdims=0),
            helper.make_node("Mul", ["words", "text_mean"], ["text_sum"]),
            helper.make_node("Mul", ["text_sum", "small"], ["text_term"]),
            helper.make_node("Reshape", ["text_term", "shape4"], ["text4"]),
            helper.make_node("Sub", ["colour4", fs.X], ["toward"]),
            helper.make_node("Mul", ["t4", "small"], ["t_term"]),
            helper.make_node("Add", ["toward", "t_term"], ["v0"]),
            helper.make_node("Add", ["v0", "text4"], [fs.VELOCITY]),
        ],
        "tiny_denoiser",
        [
            helper.make_tensor_value_info(fs.X, TensorProto.FLOAT, ["batch", 3, 64, 64]),
            helper.make_tensor_value_info(fs.T, TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info(fs.TEXT, TensorProto.FLOAT, ["batch", MAX_TOKENS, DIM]),
            helper.make_tensor_value_info(fs.POOLED, TensorProto.FLOAT, ["batch", DIM]),
            helper.make_tensor_value_info(fs.TEXT_MASK, TensorProto.FLOAT, ["batch", MAX_TOKENS]),
        ],
        [helper.make_tensor_value_info(fs.VELOCITY, TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [shape4, proj, shape_c, axis1, small],
    )
    folder.mkdir(parents=True, exist_ok=True)
    for graph, name in ((enc, fs.TEXT_ENCODER_FILE), (den, fs.DENOISER_FILE)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(folder / name))
    return folder


@pytest.fixture(scope="module")
def sampler(tmp_path_factory: pytest.TempPathFactory) -> fs.FlowSampler:
    return fs.FlowSampler.open(_tiny_pair(tmp_path_factory.mktemp("tiny_flow")))


def test_prompt_tokens_drop_unknown_words_as_the_parser_reports_them() -> None:
    text = "a zorblax red car on the left qux zorblax"
    pt = fs.prompt_tokens(text)
    assert pt.unknown == parse_prompt(text).unknown == ("zorblax", "qux")
    assert pt.ids.shape == (MAX_TOKENS,) and pt.ids.dtype == np.int64
    assert UNK_ID not in pt.ids
    assert list(pt.ids) == tokenize("a red car on the left")
    assert list(fs.prompt_tokens("").ids) == [PAD_ID] * MAX_TOKENS
    assert list(fs.prompt_tokens(None).ids) == [PAD_ID] * MAX_TOKENS
    long = fs.prompt_tokens(" ".join(["red"] * 100 + ["zorblax"]))
    assert long.ids.shape == (MAX_TOKENS,) and long.unknown == ("zorblax",)


def test_noise_and_time_grid() -> None:
    a, b = fs.initial_noise(3), fs.initial_noise(3)
    assert a.shape == (3, 64, 64) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, fs.initial_noise(4))
    times = fs.euler_times(8)
    assert times.shape == (9,) and times[0] == 0.0 and times[-1] == 1.0
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInputError):
            fs.initial_noise(bad)  # type: ignore[arg-type]
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = 1.0, -3.0
    img = fs.to_uint8(x)
    assert img.shape == (1, 2, 2, 3) and img[0, 0, 0].tolist() == [255, 0, 128]


def test_sampling_gives_a_64px_uint8_image_and_is_deterministic(sampler: fs.FlowSampler) -> None:
    assert sampler.resolution == 64 and sampler.length == MAX_TOKENS
    a = sampler.sample("a red car on a road", seed=5, steps=4, guidance=2.0)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, sampler.sample("a red car on a road", seed=5, steps=4, guidance=2.0))
    assert not np.array_equal(a, sampler.sample("a red car on a road", seed=6, steps=4, guidance=2.0))
    assert not np.array_equal(a, sampler.sample("a blue ball on sand", seed=5, steps=4, guidance=2.0))
    # a batch gives each (prompt, seed) the image it gets alone
    batch = sampler.sample_batch(
        ["a blue ball on sand", "a red car on a road"], [1, 5], steps=4, guidance=2.0
    )
    assert batch.shape == (2, 64, 64, 3) and np.array_equal(batch[1], a)


def test_guidance_path_with_an_empty_prompt_and_unknown_words(sampler: fs.FlowSampler) -> None:
    empty = sampler.sample("", seed=1, steps=3, guidance=4.0)
    # with no words the text and no-text velocities agree, so guidance changes nothing
    assert np.array_equal(empty, sampler.sample(None, seed=1, steps=3, guidance=1.0))
    odd = sampler.sample("a red car zorblax quux", seed=1, steps=3, guidance=4.0)
    assert np.array_equal(odd, sampler.sample("a red car", seed=1, steps=3, guidance=4.0))
    only_unknown = sampler.sample("zorblax quux", seed=1, steps=3, guidance=4.0)
    assert np.array_equal(only_unknown, empty)
    # guidance matters when there are words
    assert not np.array_equal(
        sampler.sample("a red car", seed=1, steps=3, guidance=1.0),
        sampler.sample("a red car", seed=1, steps=3),
    )


def test_bad_arguments_are_user_errors(sampler: fs.FlowSampler) -> None:
    for steps in (0, -2, 2.5, 10_000):
        with pytest.raises(InvalidInputError):
            sampler.sample("a car", steps=steps)  # type: ignore[arg-type]
    for guidance in (-1.0, float("nan"), 1e9):
        with pytest.raises(InvalidInputError):
            sampler.sample("a car", guidance=guidance)
    with pytest.raises(InvalidInputError):
        sampler.sample_batch(["a car"], [1, 2])


def test_other_models_are_refused(sampler: fs.FlowSampler, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError):
        fs.FlowSampler(sampler.denoiser, sampler.text_encoder)
    folder = _tiny_pair(tmp_path / "m")
    enc = open_session(folder / fs.TEXT_ENCODER_FILE, SessionOptions(intra_op_threads=1))
    with pytest.raises(UnsupportedModelError):
        fs.FlowSampler(enc, enc)


def test_module_level_sample_opens_a_folder_once(tmp_path: Path) -> None:
    folder = _tiny_pair(tmp_path / "m")
    a = fs.sample("a red car", seed=2, steps=2, guidance=1.5, model_dir=folder)
    b = fs.sample("a red car", seed=2, steps=2, guidance=1.5, model_dir=folder)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)


@pytest.mark.export
def test_a_random_weight_model_from_the_training_module_samples(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tierflow.compiler import train_text_to_image as tti

    error = tti.export_onnx(tti.build_model(seed=3), tmp_path)
    assert error < 1e-3
    sampler = fs.FlowSampler.open(tmp_path)
    image = sampler.sample("a blue truck on the left", seed=0, steps=2)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert sampler.default_guidance == fs.DEFAULT_GUIDANCE
