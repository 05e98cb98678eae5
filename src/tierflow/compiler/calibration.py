"""The inputs the compiler calibrates and measures with: generated, or given by the user.

``--calibration`` accepts

* a folder of ``.npz`` files (or one ``.npz`` file): each file is one set of feeds,
  keyed by input name -- for conv models (static INT8 scales) and fidelity checks;
* a text file, or literal text: for language models, the text whose windows the
  perplexity and top-1 agreement are measured on.

Without it the compiler generates inputs from a fixed seed: normal noise for
float inputs at the check resolution (image generators: ``side / latent_factor``
for the latent), held-back text for LMs with a tokenizer (the demo corpus's
held-out paragraphs, never trained on), seeded random token ids otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tierflow.errors import ConfigError, TokenizerError
from tierflow.model.tokenizer import Tokenizer

Feeds = dict[str, np.ndarray]

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def generated_feeds(
    session: ort.InferenceSession, meta: dict[str, str], count: int, seed: int, resolution: int | None = None
) -> list[Feeds]:
    """``count`` seeded input sets for ``session``'s inputs."""
    dims = _dim_values(meta, resolution)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        feeds: Feeds = {}
        for spec in session.get_inputs():
            dtype = _NP_TYPES.get(spec.type)
            if dtype is None:
                raise ConfigError(
                    f"cannot generate input '{spec.name}' of type {spec.type}; give --calibration"
                )
            shape = [
                d if isinstance(d, int) and d > 0 else dims.get(str(d), 1 if i == 0 else 32)
                for i, d in enumerate(spec.shape)
            ]
            if np.issubdtype(dtype, np.floating):
                feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype is np.bool_:
                feeds[spec.name] = rng.random(shape) < 0.5
            else:
                feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        samples.append(feeds)
    return samples


def _dim_values(meta: dict[str, str], resolution: int | None) -> dict[str, int]:
    """Values for symbolic dims: the model's own defaults (``tierflow.dims``), scaled to ``resolution``."""
    try:
        dims = {k: int(v) for k, v in json.loads(meta.get("tierflow.dims", "{}")).items()}
    except (ValueError, TypeError, AttributeError):
        dims = {}
    factor = meta.get("tierflow.latent_factor")
    if resolution is not None and factor and factor.isdigit():
        side = max(resolution // int(factor), 1)
        dims.update({"h": side, "w": side})
    return dims


def load_feeds(path: Path, session: ort.InferenceSession) -> list[Feeds]:
    """Feeds from a ``.npz`` file or a folder of them, checked against ``session``'s inputs."""
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"calibration folder {path} has no .npz files")
    specs = {i.name: i for i in session.get_inputs()}
    samples = []
    for file in files:
        try:
            with np.load(file) as data:
                feeds = {k: np.asarray(data[k]) for k in data.files}
        except Exception as exc:
            raise ConfigError(f"calibration file {file} is not a readable .npz: {exc}") from exc
        missing = sorted(set(specs) - set(feeds))
        extra = sorted(set(feeds) - set(specs))
        if missing or extra:
            raise ConfigError(
                f"calibration file {file.name} does not match the model's inputs "
                f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'})"
            )
        for name, value in feeds.items():
            want = _NP_TYPES.get(specs[name].type)
            if want is not None and value.dtype != want:
                raise ConfigError(
                    f"calibration file {file.name}: input {name} is {value.dtype}, the model wants {want}"
                )
        samples.append(feeds)
    return samples


def calibration_text(source: str) -> str:
    """A text file's content, or ``source`` itself when it is not a file."""
    path = Path(source)
    try:
        is_file = "\n" not in source and path.is_file()
    except OSError:  # literal text too long to be a file name
        is_file = False
    if is_file:
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"calibration text {path} is not UTF-8") from exc
    return source


def default_text() -> str:
    """The held-back paragraphs of the demo corpus (never seen in training)."""
    from tierflow.model.demo.corpus import heldout_text

    return heldout_text()


def lm_windows(
    tokenizer: Tokenizer | None, vocab: int, text: str | None, window: int, count: int, seed: int
) -> tuple[list[list[int]], str]:
    """``count`` windows of ``window`` token ids, and a label of where they came from."""
    if tokenizer is not None:
        source = text if text is not None else default_text()
        try:
            ids = [i for i in tokenizer.encode(source) if i < vocab]
        except TokenizerError:  # e.g. an exported model whose tokenizer has an empty vocabulary
            if text is not None:
                raise
            ids = []
        if len(ids) >= window + 1:
            usable = min(count, len(ids) // window)
            return [ids[k * window : (k + 1) * window] for k in range(usable)], (
                "given text" if text is not None else "held-back text"
            )
        if text is not None:
            raise ConfigError(f"calibration text has {len(ids)} tokens; need at least {window + 1}")
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, window).tolist() for _ in range(count)], "random tokens"
