"""Synthetic model inputs: one rule for the shapes of symbolic dimensions and for the values.

Whoever runs a model on inputs nobody gave -- the generic runner, the graph builder and the
profiler, the compiler's calibration and fidelity checks -- builds them here, so the same model
gets the same inputs everywhere.

Shapes. A fixed dimension is kept. A symbolic or unknown one takes, in order: its size in
``sizes`` (by symbol: the caller's overrides, sizes bound by given inputs, the model's
``tierflow.dims`` metadata -- the caller merges them), then :data:`BATCH_DEFAULT` for a
batch-like axis (:func:`is_batch_like`: named ``*batch*``, ``N`` or ``B``, or an unnamed first
axis) and :data:`DIM_DEFAULT` for every other.

Values, from one seeded ``numpy`` generator, input after input in the model's order:

* floats: standard normal;
* integers (signed or unsigned): uniform in ``[0, INT_HIGH)`` -- small, so that index-like
  inputs (token ids, class or position indices, gather indices) stay in range of any table
  with at least :data:`INT_HIGH` rows;
* bool: a fair coin.

Language models' token and cache inputs have their own shapes (``profiling.graph_builder``)
and their token ids come from text or the vocabulary (``compiler.calibration``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tierflow.errors import InvalidInputError

BATCH_DEFAULT = 1
DIM_DEFAULT = 8
INT_HIGH = 10  # generated integers are in [0, INT_HIGH)

Dim = int | str | None

# ONNX Runtime type strings (``NodeArg.type``) -> numpy dtypes: the input types a feed can have
ORT_DTYPES: dict[str, np.dtype] = {
    f"tensor({name})": np.dtype(dt)
    for name, dt in {
        "float": np.float32, "float16": np.float16, "double": np.float64,
        "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
        "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
        "bool": np.bool_,
    }.items()
}  # fmt: skip


def is_batch_like(symbol: str | None, axis: int) -> bool:
    """Whether a symbolic dimension is a batch: named like one, or an unnamed first axis."""
    if symbol is None or symbol.startswith("unk__"):  # ORT's name for an unnamed dim
        return axis == 0
    return "batch" in symbol.lower() or symbol in ("N", "B", "n", "b")


def resolve_dim(dim: Dim, axis: int, sizes: Mapping[str, int]) -> int:
    """The size of one dimension by the rule above (``dim`` < 0 counts as unknown)."""
    if isinstance(dim, int) and dim >= 0:
        return dim
    symbol = dim if isinstance(dim, str) else None
    if symbol is not None and symbol in sizes:
        return sizes[symbol]
    return BATCH_DEFAULT if is_batch_like(symbol, axis) else DIM_DEFAULT


def resolve_shape(shape: Sequence[Dim], sizes: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """A concrete shape for ``shape`` (fixed sizes, symbols or None) by the rule above."""
    known = sizes or {}
    return tuple(resolve_dim(d, axis, known) for axis, d in enumerate(shape))


def random_array(rng: np.random.Generator, dtype: np.dtype | type, shape: Sequence[int]) -> np.ndarray:
    """One seeded input of ``dtype`` and ``shape``, by the value rule above."""
    dt = np.dtype(dtype)
    size = tuple(shape)
    if dt == np.bool_:
        return rng.random(size) < 0.5
    if np.issubdtype(dt, np.floating):
        return rng.standard_normal(size).astype(dt)
    if np.issubdtype(dt, np.integer):
        return rng.integers(0, INT_HIGH, size=size).astype(dt)
    raise InvalidInputError(f"cannot generate an input of dtype {dt}")


def random_feeds(
    specs: Iterable[tuple[str, np.dtype | type, Sequence[int]]], seed: int = 0
) -> dict[str, np.ndarray]:
    """``{name: array}`` for ``(name, dtype, shape)`` specs, in order, from one generator seeded ``seed``."""
    rng = np.random.default_rng(seed)
    return {name: random_array(rng, dtype, shape) for name, dtype, shape in specs}
