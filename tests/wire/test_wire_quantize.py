"""Quantization round trips: every mode and input dtype, error bounds, edge cases."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tierflow.errors import InvalidInputError
from tierflow.wire.quantize import QuantMode, dequantize, quantize

# small tensors take numpy paths; larger ones each ONNX Runtime kernel (per tensor, per axis with a
# long channel stride, broadcast for channels-last / short strides, the ORT per-channel reduction)
quantize_module = importlib.import_module("tierflow.wire.quantize")  # the package re-exports the function

SHAPES_AXES = [
    ((64, 256), -1),
    ((4, 8, 32, 16), 1),
    ((3, 5, 7), 0),
    ((2, 3, 4, 5), 2),
    ((1000,), 0),
    ((64, 512), -1),
    ((4, 64, 128), 1),
    ((2, 2048, 8), 1),
    ((3, 40000), 0),
]


def _round_trip(
    x: np.ndarray, mode: str, axis: int = -1, asymmetric: bool = False
) -> tuple[np.ndarray, object]:
    q = quantize(x, mode, axis=axis, asymmetric=asymmetric)
    return dequantize(q.payload, q.params, q.dtype, q.shape), q


def _scale_bound(x: np.ndarray, q: object) -> np.ndarray:
    """Per-element allowed error: scale/2 (+ float16 rounding of the result for float16 tensors)."""
    params = q.params  # type: ignore[attr-defined]
    scales = params.scales.astype(np.float64)
    if params.mode is QuantMode.INT8:
        scales = scales.reshape(())
    elif params.mode is QuantMode.INT8_CHANNEL:
        shape = [1] * x.ndim
        shape[params.axis] = -1
        scales = scales.reshape(shape)
    bound = scales / 2 + np.abs(x.astype(np.float64)) * 1e-6  # half a step, up to float32 rounding
    if x.dtype == np.float16:
        bound = bound + np.abs(x.astype(np.float64)) * 2**-10 + 2**-24
    return np.broadcast_to(bound, x.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("mode", ["int8", "int8_channel"])
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES)
def test_int8_error_is_within_half_a_scale(dtype, asymmetric, mode, shape, axis) -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 0.7).astype(dtype)
    y, q = _round_trip(x, mode, axis, asymmetric)
    assert y.dtype == x.dtype and y.shape == x.shape
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= _scale_bound(x, q))
    assert q.payload.dtype == (np.uint8 if asymmetric else np.int8)


def test_per_channel_scales_follow_each_channel() -> None:
    x = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32) * np.array(
        [1, 10, 100, 1000], np.float32
    )
    y, q = _round_trip(x, "int8_channel", axis=1)
    absmax = np.abs(x).max(axis=0)
    np.testing.assert_allclose(q.params.scales, absmax / 127, rtol=1e-6)
    assert np.all(np.abs(y - x).max(axis=0) <= q.params.scales / 2 + np.abs(x).max(axis=0) * 1e-6)
    # a single per-tensor scale loses the small channel entirely; per-channel keeps it
    y_tensor, _ = _round_trip(x, "int8")
    assert np.abs(y_tensor[:, 0] - x[:, 0]).max() > 10 * np.abs(y[:, 0] - x[:, 0]).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fp16_mode(dtype) -> None:
    x = np.random.default_rng(3).standard_normal((33, 17)).astype(dtype)
    y, q = _round_trip(x, "fp16")
    assert q.payload.dtype == np.float16 and y.dtype == dtype
    np.testing.assert_array_equal(y, x.astype(np.float16).astype(dtype))


@pytest.mark.parametrize(
    "dtype",
    [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64, bool],
)
def test_raw_mode_is_exact_for_every_dtype(dtype) -> None:
    x = (np.random.default_rng(4).standard_normal((5, 6)) * 100).astype(dtype)
    y, _ = _round_trip(x, "raw")
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)


def test_asymmetric_uses_the_whole_range_for_one_sided_data() -> None:
    x = np.linspace(0.0, 10.0, 1001, dtype=np.float32)
    y_sym, q_sym = _round_trip(x, "int8")
    y_asym, q_asym = _round_trip(x, "int8", asymmetric=True)
    assert q_asym.params.scales[0] < q_sym.params.scales[0] * 0.51  # 255 steps over [0, 10] instead of 127
    assert np.abs(y_asym - x).max() < np.abs(y_sym - x).max()


def test_edge_values() -> None:
    for x in (
        np.zeros((4, 4), np.float32),  # all zero: scale 1, exact
        np.full((3, 3), -2.5, np.float32),  # constant
        np.array([1e-40, -3e-41, 0.0], np.float32),  # subnormal range
        np.array([3.0e38, -3.0e38, 1.0], np.float32),  # near float32 max
        np.array(1.5, np.float32),  # rank 0
        np.zeros((0, 7), np.float32),  # empty
    ):
        for mode in ("int8", "fp16", "raw"):
            y, q = _round_trip(x, mode)
            assert y.shape == x.shape and y.dtype == x.dtype
            if mode == "int8" and x.size:
                assert np.all(np.abs(y.astype(np.float64) - x) <= _scale_bound(x, q))
    y, _ = _round_trip(np.zeros((0, 7), np.float32), "int8_channel", axis=1)
    assert y.shape == (0, 7)


def test_non_contiguous_and_big_endian_inputs() -> None:
    base = np.random.default_rng(5).standard_normal((20, 30)).astype(np.float32)
    y, _ = _round_trip(base.T, "raw")
    np.testing.assert_array_equal(y, base.T)
    y, _ = _round_trip(base.astype(">f4"), "raw")
    np.testing.assert_array_equal(y, base)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mode", ["int8", "int8_channel"])
def test_int8_refuses_non_finite_values(bad, mode) -> None:
    x = np.ones((8, 40), np.float32)  # b > 1 exercises the ORT reduction path, which may skip NaN
    x[3, 17] = bad
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        quantize(x.reshape(2, 4, 40), mode, axis=1)
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        quantize(x, mode, axis=1)


def test_refusals() -> None:
    with pytest.raises(InvalidInputError, match="float32 or float16"):
        quantize(np.arange(4), "int8")
    with pytest.raises(InvalidInputError, match="unknown quantization mode"):
        quantize(np.ones(3, np.float32), "int4")
    with pytest.raises(InvalidInputError, match="out of range"):
        quantize(np.ones((2, 3), np.float32), "int8_channel", axis=2)
    with pytest.raises(InvalidInputError, match="rank >= 1"):
        quantize(np.array(1.0, np.float32), "int8_channel")
    with pytest.raises(InvalidInputError, match="asymmetric"):
        quantize(np.ones(3, np.float32), "fp16", asymmetric=True)
    with pytest.raises(InvalidInputError, match="numpy array"):
        quantize([1.0, 2.0], "int8")  # type: ignore[arg-type]


def test_large_tensor_takes_the_chunked_min_max_path() -> None:
    x = np.random.default_rng(6).standard_normal(3 << 20).astype(np.float32)  # 12 MiB > two-pass limit
    x[-5] = 9.0
    y, q = _round_trip(x, "int8")
    assert q.params.scales[0] == pytest.approx(9.0 / 127)
    x[(3 << 20) - 100_000] = np.nan
    with pytest.raises(InvalidInputError):
        quantize(x, "int8")


finite_f32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=9), elements=finite_f32),
    mode=st.sampled_from(["int8", "int8_channel", "fp16", "raw"]),
    asymmetric=st.booleans(),
    axis_seed=st.integers(0, 10),
)
def test_random_tensors_round_trip(x, mode, asymmetric, axis_seed) -> None:
    asymmetric = asymmetric and mode.startswith("int8")
    axis = axis_seed % x.ndim
    y, q = _round_trip(x, mode, axis, asymmetric)
    assert y.shape == x.shape and y.dtype == x.dtype
    if mode == "raw":
        np.testing.assert_array_equal(y, x)
    elif mode == "fp16":
        with np.errstate(over="ignore"):  # beyond +-65504 becomes +-inf, on both sides
            np.testing.assert_array_equal(y, x.astype(np.float16).astype(np.float32))
    else:
        assert np.all(np.abs(y.astype(np.float64) - x) <= _scale_bound(x, q))


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize(("shape", "axis"), [((64, 512), -1), ((4, 64, 128), 1), ((2, 2048, 8), 1)])
@pytest.mark.parametrize("mode", ["int8", "int8_channel"])
def test_numpy_and_onnxruntime_kernels_agree(monkeypatch, mode, shape, axis, asymmetric) -> None:
    x = np.random.default_rng(8).standard_normal(shape).astype(np.float32) * 4
    via_ort = quantize(x, mode, axis=axis, asymmetric=asymmetric)
    monkeypatch.setattr(quantize_module, "_SMALL_INT8", 1 << 30)
    via_numpy = quantize(x, mode, axis=axis, asymmetric=asymmetric)
    np.testing.assert_array_equal(via_ort.params.scales, via_numpy.params.scales)
    diff = np.abs(via_ort.payload.astype(np.int16) - via_numpy.payload.astype(np.int16))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= x.size // 1000  # only at rounding ties
    back_numpy = dequantize(via_ort.payload, via_ort.params, via_ort.dtype, via_ort.shape)
    monkeypatch.setattr(quantize_module, "_SMALL_INT8", 0)
    back_ort = dequantize(via_ort.payload, via_ort.params, via_ort.dtype, via_ort.shape)
    np.testing.assert_allclose(back_ort, back_numpy, rtol=1e-6, atol=1e-7)
