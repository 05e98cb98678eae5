"""The ``tierflow.*`` entries of an ONNX model's metadata: every key, and typed reads and writes.

Every tierflow key of ``metadata_props`` is named here and nowhere else:

=========================== ========================================================= =================
key                         value                                                     written by
=========================== ========================================================= =================
``tierflow.kind``           a :class:`~tierflow.types.ModelKind`                      every builder
``tierflow.tokenizer``      a Hugging Face ``tokenizers`` JSON document               LMs
``tierflow.max_seq_len``    the longest context (tokens), an integer >= 1             LMs, compiler
``tierflow.num_layers``     decoder layers, an integer >= 1                           LMs, compiler
``tierflow.exit_layer``     layers before the early-exit head, an integer >= 1        demo-lm
``tierflow.layer_boundaries`` JSON list of the tensors between decoder layers         LM layer finder
``tierflow.blocks``         JSON list of block output tensors, in topological order   demo models
``tierflow.dims``           JSON object ``{"symbol": size}``, sizes integers >= 0     random-image
``tierflow.latent_factor``  pixels per latent cell, an integer >= 1                   image generators
``tierflow.cond_dim``       width of the conditioning vector, an integer >= 1         image generators
``tierflow.resolutions``    comma-separated image sides (px), integers >= 1           image generators
``tierflow.max_resolution`` the largest side a target renders, an integer >= 1        compiler
``tierflow.refiner_output`` the refined image's output tensor                         image generators
``tierflow.num_classes``    classifier outputs, an integer >= 1                       demo-vision
``tierflow.input_size``     image side (px), an integer >= 1                          demo-vision
``tierflow.paper_model``    which published network a benchmark model rebuilds        paper models
``tierflow.target``         the package target an artifact was compiled for           compiler
``tierflow.precision``      the artifact's precision (fp32, fp16, int8)               compiler
``tierflow.source``         where an exported model came from (folder or hub id)      ``tierflow export``
``tierflow.model_type``     the Hugging Face ``model_type``                           ``tierflow export``
``tierflow.corpus``         the corpus the demo LM was trained on                     demo-lm training
``tierflow.config``         JSON object: the demo LM's configuration                  demo-lm training
``tierflow.training``       JSON object: the demo LM's training run and quality       demo-lm training
=========================== ========================================================= =================

Readers take the model or its metadata as a mapping (what ONNX Runtime reports,
``tierflow.runtime.session.metadata``). One rule for every key: an absent key reads as
``None`` (a list or mapping as empty), a value that is present but malformed raises
:class:`~tierflow.errors.InvalidModelError` naming the key. Writers take typed values
and format them the one way readers parse them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

import onnx

from tierflow.errors import InvalidModelError
from tierflow.types.models import ModelKind

KIND = "tierflow.kind"
TOKENIZER = "tierflow.tokenizer"
MAX_SEQ_LEN = "tierflow.max_seq_len"
NUM_LAYERS = "tierflow.num_layers"
EXIT_LAYER = "tierflow.exit_layer"
LAYER_BOUNDARIES = "tierflow.layer_boundaries"
BLOCKS = "tierflow.blocks"
DIMS = "tierflow.dims"
LATENT_FACTOR = "tierflow.latent_factor"
COND_DIM = "tierflow.cond_dim"
RESOLUTIONS = "tierflow.resolutions"
MAX_RESOLUTION = "tierflow.max_resolution"
REFINER_OUTPUT = "tierflow.refiner_output"
NUM_CLASSES = "tierflow.num_classes"
INPUT_SIZE = "tierflow.input_size"
PAPER_MODEL = "tierflow.paper_model"
TARGET = "tierflow.target"
PRECISION = "tierflow.precision"
SOURCE = "tierflow.source"
MODEL_TYPE = "tierflow.model_type"
CORPUS = "tierflow.corpus"
CONFIG = "tierflow.config"
TRAINING = "tierflow.training"

MetadataSource = Mapping[str, str] | onnx.ModelProto


def props(model: onnx.ModelProto) -> dict[str, str]:
    """All of ``model``'s metadata entries (tierflow's and any others), in order."""
    return {p.key: p.value for p in model.metadata_props}


def _map(source: MetadataSource) -> Mapping[str, str]:
    return props(source) if isinstance(source, onnx.ModelProto) else source


def _malformed(key: str, value: str, what: str) -> InvalidModelError:
    shown = value if len(value) <= 60 else value[:57] + "..."
    return InvalidModelError(f"model metadata {key}={shown!r} is not {what}")


def _integer(key: str, value: object, minimum: int, raw: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _malformed(key, raw, f"an integer >= {minimum}")
    try:
        number = int(value)
    except ValueError:
        raise _malformed(key, raw, f"an integer >= {minimum}") from None
    if number < minimum:
        raise _malformed(key, raw, f"an integer >= {minimum}")
    return number


def _int(source: MetadataSource, key: str, minimum: int = 1) -> int | None:
    raw = _map(source).get(key)
    return None if raw is None else _integer(key, raw.strip(), minimum, raw)


def _text(source: MetadataSource, key: str) -> str | None:
    return _map(source).get(key)


def _json(source: MetadataSource, key: str, what: str) -> Any:
    raw = _map(source).get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise _malformed(key, raw, what) from None


def _names(source: MetadataSource, key: str) -> list[str] | None:
    what = "a JSON list of tensor names"
    value = _json(source, key, what)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
        raise _malformed(key, _map(source)[key], what)
    return value


# --- readers ------------------------------------------------------------------------------


def config(source: MetadataSource) -> dict[str, Any]:
    """The model's own configuration (``tierflow.config``); empty when it has none."""
    what = "a JSON object"
    value = _json(source, CONFIG, what)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _malformed(CONFIG, _map(source)[CONFIG], what)
    return value


def kind(source: MetadataSource) -> ModelKind | None:
    """``tierflow.kind``; None when the model does not say."""
    raw = _map(source).get(KIND)
    if raw is None:
        return None
    try:
        return ModelKind(raw)
    except ValueError:
        raise _malformed(KIND, raw, f"one of {', '.join(ModelKind)}") from None


def tokenizer(source: MetadataSource) -> str | None:
    """``tierflow.tokenizer``: the tokenizer's JSON document (parsed by :mod:`tierflow.model.tokenizer`)."""
    return _text(source, TOKENIZER)


def max_seq_len(source: MetadataSource) -> int | None:
    return _int(source, MAX_SEQ_LEN)


def num_layers(source: MetadataSource) -> int | None:
    return _int(source, NUM_LAYERS)


def exit_layer(source: MetadataSource) -> int | None:
    return _int(source, EXIT_LAYER)


def layer_boundaries(source: MetadataSource) -> list[str] | None:
    return _names(source, LAYER_BOUNDARIES)


def blocks(source: MetadataSource) -> list[str] | None:
    """``tierflow.blocks``: the block output tensors in topological order; None when absent."""
    return _names(source, BLOCKS)


def dims(source: MetadataSource) -> dict[str, int]:
    """``tierflow.dims``: sizes for symbolic input dimensions by symbol (empty when absent)."""
    what = 'a JSON object {"symbol": size}'
    value = _json(source, DIMS, what)
    if value is None:
        return {}
    raw = _map(source)[DIMS]
    if not isinstance(value, dict):
        raise _malformed(DIMS, raw, what)
    sizes: dict[str, int] = {}
    for symbol, size in value.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _malformed(DIMS, raw, 'a JSON object {"symbol": size} with integer sizes >= 0')
        sizes[str(symbol)] = size
    return sizes


def latent_factor(source: MetadataSource) -> int | None:
    return _int(source, LATENT_FACTOR)


def cond_dim(source: MetadataSource) -> int | None:
    return _int(source, COND_DIM)


def resolutions(source: MetadataSource) -> list[int]:
    """``tierflow.resolutions``: the image sides a generator renders, as written (empty when absent)."""
    raw = _map(source).get(RESOLUTIONS)
    if raw is None or not raw.strip():
        return []
    return [_integer(RESOLUTIONS, part.strip(), 1, raw) for part in raw.split(",")]


def max_resolution(source: MetadataSource) -> int | None:
    return _int(source, MAX_RESOLUTION)


def refiner_output(source: MetadataSource) -> str | None:
    return _text(source, REFINER_OUTPUT)


def num_classes(source: MetadataSource) -> int | None:
    return _int(source, NUM_CLASSES)


def input_size(source: MetadataSource) -> int | None:
    return _int(source, INPUT_SIZE)


def target(source: MetadataSource) -> str | None:
    return _text(source, TARGET)


def precision(source: MetadataSource) -> str | None:
    return _text(source, PRECISION)


def source_of(source: MetadataSource) -> str | None:
    """``tierflow.source``: where an exported model came from."""
    return _text(source, SOURCE)


# --- writers ------------------------------------------------------------------------------


class MetadataValues(TypedDict, total=False):
    """Typed values for :func:`encode` / :func:`write_metadata`, one per key."""

    kind: ModelKind
    tokenizer: str
    max_seq_len: int
    num_layers: int
    exit_layer: int
    layer_boundaries: Sequence[str]
    blocks: Sequence[str]
    dims: Mapping[str, int]
    latent_factor: int
    cond_dim: int
    resolutions: Sequence[int]
    max_resolution: int
    refiner_output: str
    num_classes: int
    input_size: int
    paper_model: str
    target: str
    precision: str
    source: str
    model_type: str
    corpus: str
    config: Mapping[str, Any]
    training: Mapping[str, Any]


def _names_json(value: Sequence[str]) -> str:
    return json.dumps(list(value))


def _object_json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value))


_WRITERS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "kind": (KIND, lambda v: ModelKind(v).value),
    "tokenizer": (TOKENIZER, str),
    "max_seq_len": (MAX_SEQ_LEN, lambda v: str(int(v))),
    "num_layers": (NUM_LAYERS, lambda v: str(int(v))),
    "exit_layer": (EXIT_LAYER, lambda v: str(int(v))),
    "layer_boundaries": (LAYER_BOUNDARIES, _names_json),
    "blocks": (BLOCKS, _names_json),
    "dims": (DIMS, lambda v: json.dumps({str(k): int(n) for k, n in v.items()})),
    "latent_factor": (LATENT_FACTOR, lambda v: str(int(v))),
    "cond_dim": (COND_DIM, lambda v: str(int(v))),
    "resolutions": (RESOLUTIONS, lambda v: ",".join(str(int(r)) for r in v)),
    "max_resolution": (MAX_RESOLUTION, lambda v: str(int(v))),
    "refiner_output": (REFINER_OUTPUT, str),
    "num_classes": (NUM_CLASSES, lambda v: str(int(v))),
    "input_size": (INPUT_SIZE, lambda v: str(int(v))),
    "paper_model": (PAPER_MODEL, str),
    "target": (TARGET, str),
    "precision": (PRECISION, str),
    "source": (SOURCE, str),
    "model_type": (MODEL_TYPE, str),
    "corpus": (CORPUS, str),
    "config": (CONFIG, _object_json),
    "training": (TRAINING, _object_json),
}


def encode(**values: Unpack[MetadataValues]) -> dict[str, str]:
    """Metadata entries for ``values``, in the order given (e.g. for a model builder)."""
    out: dict[str, str] = {}
    for name, value in values.items():
        key, write = _WRITERS[name]
        out[key] = write(value)
    return out


def set_entries(model: onnx.ModelProto, entries: Mapping[str, str]) -> None:
    """Add or replace metadata entries: existing keys keep their place, new ones go last."""
    merged = props(model)
    merged.update(entries)
    del model.metadata_props[:]
    for key, value in merged.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def write_metadata(model: onnx.ModelProto, **values: Unpack[MetadataValues]) -> None:
    """Set (add or replace) tierflow entries of ``model``'s metadata from typed values."""
    set_entries(model, encode(**values))


def drop_metadata(model: onnx.ModelProto, *keys: str) -> None:
    """Remove the entries ``keys`` (those that are there) from ``model``'s metadata."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
