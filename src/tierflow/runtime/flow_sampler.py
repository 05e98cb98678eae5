"""Text-to-image sampling on ONNX Runtime: a flow-matching denoiser and its text encoder.

The model (trained by :mod:`tierflow.compiler.train_text_to_image`) is two ONNX files in one
folder, both opset 17, batch axis dynamic:

``text_encoder.onnx``
    ``tokens`` int64 [N, 48] (word ids of :func:`tierflow.model.scenes.tokenize`; all
    :data:`~tierflow.model.scenes.PAD_ID` = no text) -> ``text`` float32 [N, 48, D] (per-token
    features), ``pooled`` float32 [N, D] (one vector for the prompt), ``text_mask`` float32
    [N, 48] (1 where a token is a word, 0 for padding).
``denoiser.onnx``
    ``x`` float32 [N, 3, 64, 64] (the image at time ``t``), ``t`` float32 [N] in [0, 1],
    ``text``, ``pooled``, ``text_mask`` (as above) -> ``velocity`` float32 [N, 3, 64, 64].

Time runs from noise to image (rectified flow): ``x_t = (1 - t) * noise + t * image`` with
``image`` in [-1, 1], and the denoiser predicts ``d x_t / dt = image - noise``. :class:`FlowSampler`
integrates that ODE with Euler steps from ``t = 0`` (Gaussian noise from the seed) to ``t = 1``;
more steps cost more and draw cleaner images (8 on a phone, 25 in the cloud, say). Classifier-free
guidance mixes the velocities of the prompt and of no text, ``v = v_none + g * (v_text - v_none)``
(``g = 1``: the prompt's alone, one denoiser run per step; otherwise both in one batch).

Words the model does not know (not in :data:`~tierflow.model.scenes.VOCABULARY`, the same words
that :func:`~tierflow.model.scenes.parse_prompt` reports as unknown) are dropped before encoding.

numpy and ONNX Runtime only: no torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tierflow.errors import InvalidInputError, UnsupportedModelError
from tierflow.model import metadata as md
from tierflow.model.registry import ASSETS
from tierflow.model.scenes import MAX_TOKENS, PAD_ID, UNK_ID, VOCABULARY, tokenize, words_of
from tierflow.runtime.session import SessionOptions, metadata, open_session

TEXT_ENCODER_FILE = "text_encoder.onnx"
DENOISER_FILE = "denoiser.onnx"
#: where the bundled model lives (when it has been trained into the package)
DEFAULT_MODEL_DIR = ASSETS / "text_to_image"

TOKENS = "tokens"
TEXT = "text"
POOLED = "pooled"
TEXT_MASK = "text_mask"
X = "x"
T = "t"
VELOCITY = "velocity"
TEXT_OUTPUTS: tuple[str, ...] = (TEXT, POOLED, TEXT_MASK)
DENOISER_INPUTS: tuple[str, ...] = (X, T, TEXT, POOLED, TEXT_MASK)

RESOLUTION = 64
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0
MAX_STEPS = 1000

ImageArray = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as the text encoder reads it: the word ids (unknown words dropped) and those words."""

    ids: npt.NDArray[np.int64]  # [48]
    unknown: tuple[str, ...]


def prompt_tokens(prompt: str | None, length: int = MAX_TOKENS) -> PromptTokens:
    """Word ids of ``prompt`` without its unknown words, padded or cut to ``length``
    (None or blank: all padding, i.e. no text)."""
    text = prompt or ""
    words = words_of(text)
    known = set(VOCABULARY)
    unknown: list[str] = []
    for w in words:
        if w not in known and w not in unknown:
            unknown.append(w)
    ids = [i for i in tokenize(text, max(len(words), 1)) if i != UNK_ID][:length]
    ids += [PAD_ID] * (length - len(ids))
    return PromptTokens(np.asarray(ids, np.int64), tuple(unknown))


def to_uint8(x: npt.NDArray[np.floating[Any]]) -> ImageArray:
    """Images [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    pixels = (np.clip(x, -1.0, 1.0) + 1.0) * 127.5
    return np.ascontiguousarray(np.rint(pixels).astype(np.uint8).transpose(0, 2, 3, 1))


def initial_noise(seed: int, resolution: int = RESOLUTION) -> FloatArray:
    """The starting point ``x_0`` of the ODE for ``seed``: float32 [3, H, W] standard normal."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidInputError(f"seed must be an integer >= 0, not {seed!r}")
    return np.random.default_rng(int(seed)).standard_normal((3, resolution, resolution), dtype=np.float32)


def euler_times(steps: int) -> FloatArray:
    """The ``steps + 1`` times of the Euler grid from 0 to 1 (uniform)."""
    return np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or not 1 <= steps <= MAX_STEPS:
        raise InvalidInputError(f"steps must be an integer 1..{MAX_STEPS}, not {steps!r}")
    return int(steps)


def _check_guidance(guidance: float) -> float:
    g = float(guidance)
    if not np.isfinite(g) or not 0.0 <= g <= 50.0:
        raise InvalidInputError(f"guidance must be a number in 0..50, not {guidance!r}")
    return g


class FlowSampler:
    """Draws 64 px images for prompts from a text encoder and a flow-matching denoiser session."""

    def __init__(self, text_encoder: ort.InferenceSession, denoiser: ort.InferenceSession) -> None:
        enc_in = [i.name for i in text_encoder.get_inputs()]
        enc_out = {o.name for o in text_encoder.get_outputs()}
        den_in = {i.name: i for i in denoiser.get_inputs()}
        den_out = [o.name for o in denoiser.get_outputs()]
        if enc_in != [TOKENS] or not set(TEXT_OUTPUTS) <= enc_out:
            raise UnsupportedModelError(
                f"not a text encoder: needs input {TOKENS} and outputs {', '.join(TEXT_OUTPUTS)}"
            )
        if set(den_in) != set(DENOISER_INPUTS) or VELOCITY not in den_out:
            raise UnsupportedModelError(
                f"not a flow denoiser: needs inputs {', '.join(DENOISER_INPUTS)} and output {VELOCITY}"
            )
        shape = den_in[X].shape
        if len(shape) != 4 or shape[1] != 3 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise UnsupportedModelError(f"denoiser input {X} must be [N, 3, S, S], not {shape}")
        tok_shape = text_encoder.get_inputs()[0].shape
        self.length = tok_shape[1] if len(tok_shape) == 2 and isinstance(tok_shape[1], int) else MAX_TOKENS
        self.resolution = int(shape[2])
        self.text_encoder = text_encoder
        self.denoiser = denoiser
        config = _config(metadata(text_encoder))
        vocabulary = config.get("vocabulary")
        if vocabulary is not None and list(vocabulary) != list(VOCABULARY):
            raise UnsupportedModelError(
                "the text encoder was trained on another vocabulary than this tierflow's"
            )
        self.config: dict[str, Any] = _config(metadata(denoiser))
        self.default_guidance = float(self.config.get("guidance", DEFAULT_GUIDANCE))
        self._none: dict[str, FloatArray] | None = None

    @classmethod
    def open(
        cls, model_dir: str | Path | None = None, threads: int = 1, providers: tuple[str, ...] | None = None
    ) -> FlowSampler:
        """Open ``model_dir``'s two ONNX files (default: the bundled model) on ``threads`` threads."""
        folder = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        options = SessionOptions(intra_op_threads=threads, providers=providers or ("CPUExecutionProvider",))
        return cls(
            open_session(folder / TEXT_ENCODER_FILE, options), open_session(folder / DENOISER_FILE, options)
        )

    def encode(self, prompts: Sequence[str | None]) -> dict[str, FloatArray]:
        """The text encoder's outputs for ``prompts`` (each row one prompt)."""
        tokens = np.stack([prompt_tokens(p, self.length).ids for p in prompts])
        outs = self.text_encoder.run(list(TEXT_OUTPUTS), {TOKENS: tokens})
        return {name: np.asarray(o, np.float32) for name, o in zip(TEXT_OUTPUTS, outs, strict=True)}

    def _unconditional(self, n: int) -> dict[str, FloatArray]:
        if self._none is None:
            self._none = self.encode([None])
        return {k: np.repeat(v, n, axis=0) for k, v in self._none.items()}

    def velocity(self, x: FloatArray, t: float, text: dict[str, FloatArray], guidance: float) -> FloatArray:
        """The guided velocity at ``x`` (float32 [N, 3, S, S]) and time ``t``."""
        n = x.shape[0]
        if guidance == 1.0:
            feeds = {X: x, T: np.full((n,), t, np.float32), **text}
            return np.asarray(self.denoiser.run([VELOCITY], feeds)[0], np.float32)
        none = self._unconditional(n)
        feeds = {
            X: np.concatenate([x, x]),
            T: np.full((2 * n,), t, np.float32),
            **{k: np.concatenate([text[k], none[k]]) for k in TEXT_OUTPUTS},
        }
        v = np.asarray(self.denoiser.run([VELOCITY], feeds)[0], np.float32)
        v_text, v_none = v[:n], v[n:]
        return v_none + np.float32(guidance) * (v_text - v_none)

    def sample_batch(
        self,
        prompts: Sequence[str | None],
        seeds: Sequence[int],
        steps: int = DEFAULT_STEPS,
        guidance: float | None = None,
    ) -> ImageArray:
        """One image per (prompt, seed): uint8 [N, S, S, 3]. Each image depends on its own prompt
        and seed only, not on the others in the batch."""
        if len(prompts) != len(seeds) or not prompts:
            raise InvalidInputError(f"need as many seeds as prompts (>= 1): {len(prompts)} and {len(seeds)}")
        steps = _check_steps(steps)
        g = _check_guidance(self.default_guidance if guidance is None else guidance)
        text = self.encode(prompts)
        x = np.stack([initial_noise(s, self.resolution) for s in seeds])
        times = euler_times(steps)
        for i in range(steps):
            t0, t1 = float(times[i]), float(times[i + 1])
            x = x + np.float32(t1 - t0) * self.velocity(x, t0, text, g)
        return to_uint8(x)

    def sample(
        self, prompt: str | None, seed: int = 0, steps: int = DEFAULT_STEPS, guidance: float | None = None
    ) -> ImageArray:
        """One image for ``prompt``: uint8 [S, S, 3]; the same for the same (prompt, seed, steps,
        guidance). ``guidance`` None: the model's default (its metadata)."""
        image: ImageArray = self.sample_batch([prompt], [seed], steps, guidance)[0]
        return image


def _config(meta: dict[str, str]) -> dict[str, Any]:
    raw = meta.get(md.CONFIG)
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise UnsupportedModelError(f"model metadata {md.CONFIG} is not JSON") from None
    return value if isinstance(value, dict) else {}


_OPEN: dict[tuple[str, int], FlowSampler] = {}


def sample(
    prompt: str | None,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    guidance: float | None = None,
    model_dir: str | Path | None = None,
    threads: int = 1,
) -> ImageArray:
    """One 64 px uint8 image [64, 64, 3] for ``prompt`` from the model in ``model_dir`` (default:
    the bundled one); the sessions are opened once per folder and kept."""
    folder = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    key = (str(folder.resolve()), threads)
    if key not in _OPEN:
        _OPEN[key] = FlowSampler.open(folder, threads)
    return _OPEN[key].sample(prompt, seed, steps, guidance)
