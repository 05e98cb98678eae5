"""Quantize tensors for the wire and back.

Modes:

* ``raw`` -- the tensor's own bytes, any supported dtype.
* ``fp16`` -- float32 is cast to float16 (values beyond +-65504 become +-inf, as in any FP16 cast).
* ``int8`` -- one scale for the whole tensor.
* ``int8_channel`` -- one scale per slice along ``axis`` (e.g. the hidden dimension).

Integer modes are symmetric by default (int8 payload, ``q = round(x / scale)``, ``scale = absmax / 127``)
or asymmetric (uint8 payload with a zero point, ``q = round(x / scale) + zero``, ``scale = (max - min) / 255``
over a range that includes 0, as ONNX's DynamicQuantizeLinear). Either way the dequantized value is within
``scale / 2`` of the input. Rounding is half to even. Large tensors go through ONNX Runtime kernels (see
_kernels), small ones through numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from tierflow.errors import InvalidInputError
from tierflow.types.quant import QuantMode
from tierflow.wire import _kernels

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_NO_SCALES = np.ones(0, np.float32)
_NO_SCALES.flags.writeable = False


@dataclass(frozen=True)
class QuantParams:
    """What the receiver needs to undo the quantization; all of it travels in the frame header."""

    mode: QuantMode
    axis: int = 0  # INT8_CHANNEL only, counted from the front (>= 0)
    asymmetric: bool = False  # INT8 modes: uint8 payload with zero points
    scales: np.ndarray = field(default_factory=lambda: _NO_SCALES)  # float32
    zero_points: np.ndarray | None = None  # uint8, asymmetric only


RAW_PARAMS = QuantParams(QuantMode.RAW)  # frozen: one instance serves every raw frame


@dataclass(frozen=True)
class Quantized:
    payload: np.ndarray  # C-contiguous, dtype given by payload_dtype()
    params: QuantParams
    dtype: np.dtype  # the original tensor's dtype
    shape: tuple[int, ...]


@cache
def payload_dtype(mode: QuantMode, asymmetric: bool, dtype: np.dtype) -> np.dtype:
    """The element type of the payload for a tensor of ``dtype`` sent in ``mode``."""
    if mode.is_int8:
        return np.dtype(np.uint8 if asymmetric else np.int8)
    if mode is QuantMode.FP16:
        return np.dtype(np.float16)
    return np.dtype(dtype)


def channel_count(mode: QuantMode, shape: tuple[int, ...], axis: int) -> int:
    """How many scales a header of this mode carries."""
    if mode is QuantMode.INT8:
        return 1
    if mode is QuantMode.INT8_CHANNEL:
        return shape[axis]
    return 0


def quantize(
    x: np.ndarray, mode: QuantMode | str = QuantMode.INT8, *, axis: int = -1, asymmetric: bool = False
) -> Quantized:
    """Quantize ``x`` for the wire. Raises InvalidInputError for dtypes the mode cannot carry or NaN/Inf."""
    mode = QuantMode.parse(mode)
    if not isinstance(x, np.ndarray | np.generic):
        raise InvalidInputError(f"expected a numpy array, got {type(x).__name__}")
    x = np.asarray(x)
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)  # (this would turn a 0-d array into shape (1,))
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    dtype, shape = x.dtype, tuple(int(d) for d in x.shape)
    if mode is QuantMode.RAW:
        return Quantized(x.reshape(-1), RAW_PARAMS, dtype, shape)
    if dtype not in FLOAT_DTYPES:
        raise InvalidInputError(
            f"mode {mode.value} needs a float32 or float16 tensor, got {dtype}; use mode raw"
        )
    if asymmetric and not mode.is_int8:
        raise InvalidInputError(f"mode {mode.value} has no asymmetric form")
    if mode is QuantMode.FP16:
        return Quantized(_to_f16(x.reshape(-1)), QuantParams(mode), dtype, shape)
    x32 = _to_f32(x.reshape(-1))
    if mode is QuantMode.INT8:
        axis, x3 = 0, x32.reshape(1, 1, -1)
        scale, zero = _tensor_scale(*_minmax(x32), asymmetric) if x32.size else (1.0, 0)
        scales = np.array([scale], np.float32)
        zeros = np.array([zero], np.uint8) if asymmetric else None
    else:
        if not shape:
            raise InvalidInputError("mode int8_channel needs a tensor of rank >= 1")
        if not -len(shape) <= axis < len(shape):
            raise InvalidInputError(f"axis {axis} is out of range for a tensor of rank {len(shape)}")
        axis %= len(shape)
        x3 = x32.reshape(_acb(shape, axis))
        scales, zeros = _scales(*_channel_minmax(x3), asymmetric)
    payload = _quantize3(x3, scales, zeros, per_tensor=mode is QuantMode.INT8)
    return Quantized(payload, QuantParams(mode, axis, asymmetric, scales, zeros), dtype, shape)


def dequantize(
    payload: np.ndarray, params: QuantParams, dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    """Undo :func:`quantize`: an array of ``dtype`` and ``shape`` from a flat ``payload``.

    Raw (and float16-in-fp16) payloads come back as views of ``payload``. The caller guarantees
    consistency (the frame decoder has validated every field).
    """
    dtype = np.dtype(dtype)
    mode = params.mode
    if mode is QuantMode.RAW:
        return payload.reshape(shape)
    if mode is QuantMode.FP16:
        return (payload if dtype == np.float16 else _f16_to_f32(payload)).reshape(shape)
    per_tensor = mode is QuantMode.INT8
    acb = (1, 1, payload.size) if per_tensor else _acb(shape, params.axis)
    out32 = _dequantize3(payload.reshape(acb), params, per_tensor)
    return (out32 if dtype == np.float32 else _f32_to_f16(out32)).reshape(shape)


# --- internals -----------------------------------------------------------------------------------

# Per-axis QuantizeLinear in ORT is fast only when each channel's run of elements is long; below this
# the broadcast (multiply, then per-tensor quantize) kernels win by orders of magnitude.
_AXIS_KERNEL_MIN_STRIDE = 16
_TWO_PASS_MAX = 1 << 21  # elements: up to 8 MiB, min and max in two passes hit the cache
_CHUNK = 1 << 16  # elements per chunk when one pass over memory computes both
# Below these sizes numpy's few ufunc calls beat an ONNX Runtime call (~20 us of binding overhead):
# decode-step activations (1 x 1 x hidden) are this small, and there is one per token.
_SMALL_INT8 = 1 << 14
_SMALL_CAST = 1 << 12
_TINY = float(np.finfo(np.float32).tiny)


def _acb(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(elements before ``axis``, channels, elements after): any tensor reshapes to it without a copy."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def _to_f32(flat: np.ndarray) -> np.ndarray:
    return flat if flat.dtype == np.float32 else _f16_to_f32(flat)


def _to_f16(flat: np.ndarray) -> np.ndarray:
    if flat.dtype == np.float16:
        return flat
    if flat.size <= _SMALL_CAST:
        with np.errstate(over="ignore"):  # beyond +-65504 becomes +-inf, as documented
            return flat.astype(np.float16)
    out = np.empty(flat.size, np.float16)
    _kernels.run("cast_f32_f16", {"x": flat}, {"y": out})
    return out


def _f16_to_f32(flat: np.ndarray) -> np.ndarray:
    flat = flat.reshape(-1)
    if flat.size <= _SMALL_CAST:
        return flat.astype(np.float32)
    out = np.empty(flat.size, np.float32)
    _kernels.run("cast_f16_f32", {"x": flat}, {"y": out})
    return out


def _f32_to_f16(flat: np.ndarray) -> np.ndarray:
    return _to_f16(flat)


def _minmax(flat: np.ndarray) -> tuple[float, float]:
    """Min and max of a float32 vector; NaN propagates (numpy's reductions do, ORT's do not)."""
    if flat.size <= _TWO_PASS_MAX:
        return float(flat.min()), float(flat.max())
    starts = range(0, flat.size, _CHUNK)
    lows = np.empty(len(starts), np.float32)
    highs = np.empty(len(starts), np.float32)
    for i, start in enumerate(starts):
        chunk = flat[start : start + _CHUNK]  # read from memory once, reduced twice from cache
        lows[i] = chunk.min()
        highs[i] = chunk.max()
    return float(lows.min()), float(highs.max())


def _check_finite(lo: np.ndarray | float, hi: np.ndarray | float) -> None:
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise InvalidInputError("cannot quantize a tensor holding NaN or Inf to int8; use mode fp16 or raw")


def _scales(lo: np.ndarray, hi: np.ndarray, asymmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales (float32, > 0) and zero points (uint8 or None) from per-slice ranges (float64)."""
    if asymmetric:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        exact = (hi - lo) / 255.0
    else:
        exact = np.maximum(hi, -lo) / 127.0
    # round up to float32 so the range never needs more than 255 (or +-127) steps
    scales = exact.astype(np.float32)
    scales = np.where(scales < exact, np.nextafter(scales, np.float32(np.inf)), scales)
    # An all-zero slice gets scale 1; a range so small that 1/scale would overflow gets the smallest
    # normal float32 (its values then round to 0 or +-1, still within scale / 2).
    scales = np.where(scales > 0, np.maximum(scales, _TINY), np.float32(1.0)).astype(np.float32)
    if not asymmetric:
        return scales, None
    zeros = np.clip(np.rint(-lo / scales.astype(np.float64)), 0, 255).astype(np.uint8)
    return scales, zeros


def _tensor_scale(lo: float, hi: float, asymmetric: bool) -> tuple[float, int]:
    """:func:`_scales` for one slice in plain floats: the per-tensor path runs once per frame."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        _check_finite(lo, hi)
    if asymmetric:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        exact = (hi - lo) / 255.0
    else:
        exact = max(hi, -lo) / 127.0
    scale32 = np.float32(exact)
    if scale32 < exact:
        scale32 = np.nextafter(scale32, np.float32(np.inf))
    scale = max(float(scale32), _TINY) if scale32 > 0 else 1.0
    zero = min(255, max(0, round(-lo / scale))) if asymmetric else 0  # round(): half to even, as np.rint
    return scale, zero


def _channel_minmax(x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) min and max as float64; raises for NaN/Inf."""
    before, channels, after = x3.shape
    if not x3.size:
        return np.zeros(channels), np.zeros(channels)
    if x3.size <= _SMALL_INT8:
        lo, hi = x3.min(axis=(0, 2)), x3.max(axis=(0, 2))
    elif after == 1:
        x2 = x3.reshape(before, channels)
        # numpy reduces over rows fast only when rows are long: fold k rows into one when channels are few.
        k = max(1, min(before, 4096 // channels))
        main = before - before % k
        folded = x2[:main].reshape(main // k, k * channels)
        lows = [folded.min(axis=0).reshape(k, channels).min(axis=0)]
        highs = [folded.max(axis=0).reshape(k, channels).max(axis=0)]
        if main < before:
            lows.append(x2[main:].min(axis=0))
            highs.append(x2[main:].max(axis=0))
        lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    else:
        lo, hi = np.empty(channels, np.float32), np.empty(channels, np.float32)
        _kernels.run("reduce_axis", {"x": x3}, {"mx": hi, "mn": lo})
        _check_finite(*_minmax(x3.reshape(-1)))  # ORT's reductions may skip NaN
    _check_finite(lo, hi)
    return lo.astype(np.float64), hi.astype(np.float64)


def _quantize3(x3: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, per_tensor: bool) -> np.ndarray:
    """Quantize a (before, channels, after) float32 view; returns the flat int8 / uint8 payload."""
    asymmetric = zeros is not None
    qtype = np.uint8 if asymmetric else np.int8
    out = np.empty(x3.shape, qtype)
    suffix = "u8" if asymmetric else "s8"
    z = zeros if zeros is not None else np.zeros(len(scales), np.int8)
    if not x3.size:
        pass
    elif x3.size <= _SMALL_INT8:
        t = x3 / scales.reshape(1, -1, 1)
        np.rint(t, out=t)
        if asymmetric:  # symmetric values stay within +-127 (scales are rounded up); these can pass 0 or 255
            t += z.reshape(1, -1, 1)
            np.minimum(t, np.float32(255), out=t)
            np.maximum(t, np.float32(0), out=t)
        out[...] = t
    elif per_tensor:
        inputs = {"x": x3.reshape(-1), "s": scales.reshape(()), "z": z.reshape(())}
        _kernels.run(f"q_tensor_{suffix}", inputs, {"y": out.reshape(-1)})
    elif x3.shape[2] >= _AXIS_KERNEL_MIN_STRIDE:
        _kernels.run(f"q_axis_{suffix}", {"x": x3, "s": scales, "z": z}, {"y": out})
    else:
        inputs = {"x": x3, "inv": (1.0 / scales.astype(np.float64)).astype(np.float32).reshape(1, -1, 1)}
        if asymmetric:
            inputs["zf"] = z.astype(np.float32).reshape(1, -1, 1)
        _kernels.run(f"q_bcast_{suffix}", inputs, {"y": out})
    return out.reshape(-1)


def _dequantize3(q3: np.ndarray, params: QuantParams, per_tensor: bool) -> np.ndarray:
    """(q - zero) * scale over a (before, channels, after) view; returns flat float32."""
    out = np.empty(q3.shape, np.float32)
    scales = params.scales
    zeros = params.zero_points if params.asymmetric else None
    suffix = "u8" if params.asymmetric else "s8"
    z = zeros if zeros is not None else np.zeros(len(scales), np.int8)
    if not q3.size:
        pass
    elif q3.size <= _SMALL_INT8:
        if zeros is not None:
            np.subtract(q3, zeros.reshape(1, -1, 1), out=out, dtype=np.float32)
            out *= scales.reshape(1, -1, 1)
        else:
            np.multiply(q3, scales.reshape(1, -1, 1), out=out)
    elif per_tensor:
        inputs = {"q": q3.reshape(-1), "s": scales.reshape(()), "z": z.reshape(())}
        _kernels.run(f"dq_tensor_{suffix}", inputs, {"y": out.reshape(-1)})
    elif q3.shape[2] >= _AXIS_KERNEL_MIN_STRIDE:
        _kernels.run(f"dq_axis_{suffix}", {"q": q3, "s": scales, "z": z}, {"y": out})
    else:
        after = q3.shape[2]
        s3 = np.repeat(scales, after).reshape(1, -1, after)
        z3 = np.repeat(z, after).reshape(1, -1, after)
        for start in range(0, q3.shape[0], _kernels.BLOCK_ROWS):
            rows = slice(start, start + _kernels.BLOCK_ROWS)
            _kernels.run(f"dq_block_{suffix}", {"q": q3[rows], "s": s3, "z": z3}, {"y": out[rows]})
    return out.reshape(-1)
