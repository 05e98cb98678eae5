"""Run any ONNX model on given or generated inputs and summarise what comes out.

Inputs the caller does not give are generated with a seeded generator:

* float types: standard normal; integer types: uniform in [0, 10) (small, so
  that index-like inputs such as token ids stay in range); bool: fair coin.
* Symbolic or unknown dimensions are resolved in this order: a size fixed
  by an input the caller gave (the same symbol must mean the same size
  everywhere), an explicit ``dims`` override, the model's ``tierflow.dims``
  metadata (a JSON object ``{"symbol": size}``), then the defaults:
  :data:`BATCH_DEFAULT` for batch-like dims (named ``*batch*``, ``N`` or ``B``, or
  an unnamed first axis) and :data:`DIM_DEFAULT` for everything else.

A given input with an unknown name, the wrong rank, a wrong fixed size, a
clash of a symbolic size, or the wrong dtype raises a one-line
:class:`~tierflow.errors.InvalidInputError` before anything runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.runtime.session import SessionOptions, active_provider, metadata, open_session

BATCH_DEFAULT = 1
DIM_DEFAULT = 8
INT_HIGH = 10  # generated integers are in [0, INT_HIGH)

# ONNX Runtime type strings -> numpy dtypes
ORT_DTYPES: dict[str, np.dtype] = {
    f"tensor({name})": np.dtype(dt)
    for name, dt in {
        "float": np.float32, "float16": np.float16, "double": np.float64,
        "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
        "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
        "bool": np.bool_,
    }.items()
}

Dim = int | str | None


@dataclass(frozen=True)
class TensorSummary:
    """One tensor in a line: name, shape, dtype and value statistics (None for an empty tensor)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    min: float | None
    max: float | None
    mean: float | None

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> TensorSummary:
        if array.size == 0 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            return cls(name, tuple(array.shape), str(array.dtype), None, None, None)
        values = array.astype(np.float64)
        return cls(name, tuple(array.shape), str(array.dtype), float(values.min()), float(values.max()),
                   float(values.mean()))


@dataclass(frozen=True)
class GenericResult:
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    arrays: dict[str, np.ndarray]  # the outputs themselves
    provider: str
    elapsed_s: float  # ONNX Runtime time only


def is_batch_like(symbol: str | None, axis: int) -> bool:
    if symbol is None or symbol.startswith("unk__"):  # ORT's name for an unnamed dim
        return axis == 0
    return "batch" in symbol.lower() or symbol in ("N", "B", "n", "b")


def load_npy_inputs(specs: Sequence[str]) -> dict[str, np.ndarray]:
    """Parse ``NAME=FILE.npy`` arguments into arrays."""
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise InvalidInputError(f"an input must be given as NAME=FILE.npy, got {spec!r}")
        if name in arrays:
            raise InvalidInputError(f"input {name!r} is given twice")
        try:
            arrays[name] = np.load(Path(file), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot read {file} as a .npy array: {exc}") from exc
    return arrays


class GenericRunner:
    """Runs one ONNX Runtime session on any inputs."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.inputs = list(session.get_inputs())
        for spec in self.inputs:
            if spec.type not in ORT_DTYPES:
                raise UnsupportedModelError(f"input {spec.name} has type {spec.type}: cannot feed it")
        self.meta_dims = _metadata_dims(metadata(session))

    @classmethod
    def open(cls, model: str | Path | bytes, options: SessionOptions | None = None) -> GenericRunner:
        return cls(open_session(model, options))

    def prepare_inputs(
        self,
        given: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        dims: Mapping[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """The caller's inputs (checked) plus generated ones for every input not given."""
        given = dict(given or {})
        known = {spec.name for spec in self.inputs}
        unknown = sorted(set(given) - known)
        if unknown:
            names = ", ".join(s.name for s in self.inputs)
            raise InvalidInputError(f"unknown input {unknown[0]!r}; the model's inputs are: {names}")
        bound: dict[str, int] = {}
        for spec in self.inputs:
            if spec.name in given:
                self._check(spec, np.asarray(given[spec.name]), bound)
        sizes = {**self.meta_dims, **(dims or {}), **bound}
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:  # model order, so the same seed gives the same inputs
            if spec.name in given:
                feeds[spec.name] = np.asarray(given[spec.name])
                continue
            shape = tuple(_resolve(d, axis, sizes) for axis, d in enumerate(spec.shape))
            feeds[spec.name] = _random(rng, ORT_DTYPES[spec.type], shape)
        return feeds

    def run(
        self,
        given: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        dims: Mapping[str, int] | None = None,
    ) -> GenericResult:
        feeds = self.prepare_inputs(given, seed, dims)
        start = time.perf_counter()
        try:
            values = self.session.run(None, feeds)
        except Exception as exc:  # ORT's errors are opaque; the usual cause is a shape the graph rejects
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(f"the model rejected these inputs: {first}") from exc
        elapsed = time.perf_counter() - start
        names = [o.name for o in self.session.get_outputs()]
        arrays = {n: np.asarray(v) for n, v in zip(names, values, strict=True)}
        return GenericResult(
            inputs=[TensorSummary.of(n, a) for n, a in feeds.items()],
            outputs=[TensorSummary.of(n, a) for n, a in arrays.items()],
            arrays=arrays,
            provider=active_provider(self.session),
            elapsed_s=elapsed,
        )

    @staticmethod
    def _check(spec: ort.NodeArg, array: np.ndarray, bound: dict[str, int]) -> None:
        want = ORT_DTYPES[spec.type]
        got = f"input {spec.name} must have shape {_fmt(spec.shape)}, got {list(array.shape)}"
        if array.dtype != want:
            raise InvalidInputError(f"input {spec.name} must be {want}, got {array.dtype}")
        if array.ndim != len(spec.shape):
            raise InvalidInputError(f"{got} (wrong rank)")
        for axis, (dim, size) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if isinstance(dim, int) and dim >= 0 and dim != size:
                raise InvalidInputError(f"{got} (axis {axis})")
            if isinstance(dim, str) and bound.setdefault(dim, size) != size:
                raise InvalidInputError(f"{got}: {dim}={size} but another input has {dim}={bound[dim]}")


def _metadata_dims(meta: Mapping[str, str]) -> dict[str, int]:
    raw = meta.get("tierflow.dims")
    if not raw:
        return {}
    try:
        dims = json.loads(raw)
        return {str(k): int(v) for k, v in dims.items()}
    except (ValueError, TypeError, AttributeError):
        return {}  # a malformed hint only loses the hint; the defaults still apply


def _resolve(dim: Dim, axis: int, sizes: Mapping[str, int]) -> int:
    if isinstance(dim, int) and dim >= 0:
        return dim
    symbol = dim if isinstance(dim, str) else None
    if symbol is not None and symbol in sizes:
        return sizes[symbol]
    return BATCH_DEFAULT if is_batch_like(symbol, axis) else DIM_DEFAULT


def _random(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, INT_HIGH, size=shape).astype(dtype)


def _fmt(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
