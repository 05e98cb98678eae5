"""The inputs the compiler calibrates and measures with: generated, or given by the user.

``--calibration`` accepts

* a folder of ``.npz`` files (or one ``.npz`` file): each file is one set of feeds,
  keyed by input name -- for conv models (static INT8 scales) and fidelity checks;
* a text file, or literal text: for language models, the text whose windows the
  perplexity and top-1 agreement are measured on.

Without it the compiler generates inputs from a fixed seed by the one rule of
:mod:`tierflow.model.feeds`, at the check resolution (image generators: ``side /
latent_factor`` for the latent); LMs get held-back text when they have a tokenizer
(the demo corpus's held-out paragraphs, never trained on), seeded random token ids
otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tierflow.errors import ConfigError, TokenizerError
from tierflow.model import metadata as md
from tierflow.model.feeds import ORT_DTYPES, random_array, resolve_shape
from tierflow.model.tokenizer import Tokenizer
from tierflow.runtime.text_to_image import example_feeds, is_pipeline

Feeds = dict[str, np.ndarray]


def generated_feeds(
    session: ort.InferenceSession, meta: Mapping[str, str], count: int, seed: int,
    resolution: int | None = None,
) -> list[Feeds]:
    """``count`` seeded input sets for ``session``'s inputs (one generator across them all)."""
    if is_pipeline(session):
        return example_feeds(count, seed)
    dims = _dim_values(meta, resolution)
    specs = []
    for spec in session.get_inputs():
        dtype = ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise ConfigError(f"cannot generate input '{spec.name}' of type {spec.type}; give --calibration")
        specs.append((spec.name, dtype, resolve_shape(spec.shape, dims)))
    rng = np.random.default_rng(seed)
    return [{name: random_array(rng, dtype, shape) for name, dtype, shape in specs} for _ in range(count)]


def _dim_values(meta: Mapping[str, str], resolution: int | None) -> dict[str, int]:
    """Sizes for symbolic dims: the model's own (``tierflow.dims``), the latent scaled to ``resolution``."""
    dims = md.dims(meta)
    factor = md.latent_factor(meta)
    if resolution is not None and factor is not None:
        side = max(resolution // factor, 1)
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
            want = ORT_DTYPES.get(specs[name].type)
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
