"""A diffusers Stable-Diffusion pipeline in tierflow's component form, run on ONNX Runtime alone.

``tierflow export`` writes a folder (:mod:`tierflow.compiler.export_diffusers`)::

    pipeline.json          the manifest: sizes, scales, the scheduler's config, the tokenizer's files
    text_encoder.onnx      input_ids int64 [B, L] -> last_hidden_state [B, L, D]
    unet.onnx              sample [B, C, h, w], timestep float32 [B], encoder_hidden_states [B, L, D]
                           -> noise_pred [B, C, h, w]
    vae_decoder.onnx       latents [B, C, h, w] -> image [B, 3, H, W] in about [-1, 1]
    tokenizer/vocab.json, tokenizer/merges.txt

and :class:`DiffusionPipeline` drives it the way diffusers' ``StableDiffusionPipeline`` does: CLIP's
byte-level BPE in plain Python, the prompt and the empty prompt through the text encoder
(classifier-free guidance), the DDIM or Euler step in numpy with diffusers' formulas, the VAE decoder.
Nothing here imports torch, transformers or diffusers.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tierflow.errors import (
    InvalidInputError,
    InvalidModelError,
    ModelNotFoundError,
    TokenizerError,
    UnsupportedModelError,
)
from tierflow.runtime.image_result import ImageResult, to_uint8
from tierflow.runtime.session import SessionOptions, active_provider, open_session

MANIFEST = "pipeline.json"
FORMAT = "tierflow-diffusion"
VERSION = 1

# Tensor names of the three ONNX files.
INPUT_IDS, LAST_HIDDEN_STATE = "input_ids", "last_hidden_state"
SAMPLE, TIMESTEP, NOISE_PRED = "sample", "timestep", "noise_pred"
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
LATENTS, IMAGE = "latents", "image"
COMPONENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text_encoder": ((INPUT_IDS,), (LAST_HIDDEN_STATE,)),
    "unet": ((SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES), (NOISE_PRED,)),
    "vae_decoder": ((LATENTS,), (IMAGE,)),
}

SCHEDULERS = ("DDIMScheduler", "EulerDiscreteScheduler")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
MAX_RESOLUTION = 4096
MAX_STEPS = 1000


# --- the scheduler ---------------------------------------------------------------------------------


def check_scheduler(name: str, config: Mapping[str, Any]) -> None:
    """Raise :class:`UnsupportedModelError` unless :class:`Schedule` reproduces scheduler ``name`` with
    ``config`` (diffusers' ``scheduler_config.json``) exactly."""
    if name not in SCHEDULERS:
        raise UnsupportedModelError(
            f"scheduler {name} is not supported; tierflow runs {' and '.join(SCHEDULERS)}"
        )

    def refuse(what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{name} with {what} is not supported")

    if config.get("trained_betas") is None and config.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        raise refuse(f"beta_schedule {config.get('beta_schedule')!r}")
    spacing = config.get("timestep_spacing", "leading" if name == "DDIMScheduler" else "linspace")
    if spacing not in ("linspace", "leading", "trailing"):
        raise refuse(f"timestep_spacing {spacing!r}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise refuse(f"prediction_type {prediction!r}")
    if name == "DDIMScheduler":
        if config.get("thresholding"):
            raise refuse("thresholding")
        return
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if config.get(flag):
            raise refuse(flag)
    if config.get("interpolation_type", "linear") != "linear":
        raise refuse(f"interpolation_type {config.get('interpolation_type')!r}")
    if config.get("timestep_type", "discrete") != "discrete":
        raise refuse(f"timestep_type {config.get('timestep_type')!r}")
    if config.get("final_sigmas_type", "zero") not in ("zero", "sigma_min"):
        raise refuse(f"final_sigmas_type {config.get('final_sigmas_type')!r}")


def _alphas_cumprod(config: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    """diffusers' ``alphas_cumprod`` (beta schedule, optional zero-terminal-SNR rescale)."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], np.float64)
    elif schedule == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    else:  # squaredcos_cap_v2: the cosine schedule, beta capped at 0.999

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])
    betas = betas.astype(np.float32).astype(np.float64)  # diffusers keeps betas in float32
    if config.get("rescale_betas_zero_snr"):
        root = np.sqrt(np.cumprod(1.0 - betas))
        first, last = root[0], root[-1]
        root = (root - last) * first / (first - last)
        bar = root**2
        betas = 1.0 - np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return np.cumprod((1.0 - betas).astype(np.float32), dtype=np.float32).astype(np.float64)  # as torch does


def _spaced_timesteps(config: Mapping[str, Any], steps: int, spacing: str, ddim: bool) -> npt.NDArray[Any]:
    """The inference timesteps, largest first, for ``timestep_spacing`` (diffusers' set_timesteps: DDIM
    rounds them to integers, Euler keeps linspace's fractions in float32)."""
    n = int(config.get("num_train_timesteps", 1000))
    if spacing == "linspace":
        if ddim:
            return np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
        return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = n // steps
        return (np.arange(steps) * ratio).round()[::-1] + int(config.get("steps_offset", 0))
    return np.round(np.arange(n, 0, -n / steps)) - 1  # trailing


class Schedule:
    """One sampling run's timesteps and steps: DDIM (eta 0, as the pipeline calls it) or Euler."""

    def __init__(self, name: str, config: Mapping[str, Any], steps: int) -> None:
        check_scheduler(name, config)
        n = int(config.get("num_train_timesteps", 1000))
        if not 1 <= steps <= n:
            raise InvalidInputError(f"steps must be 1..{n}, not {steps}")
        self.name, self.steps = name, steps
        self.prediction = str(config.get("prediction_type", "epsilon"))
        self.alphas_cumprod = _alphas_cumprod(config).astype(np.float32)
        if name == "EulerDiscreteScheduler" and config.get("rescale_betas_zero_snr"):
            self.alphas_cumprod[-1] = 2.0**-24  # diffusers' Euler: a finite top sigma for zero terminal SNR
        ac = self.alphas_cumprod.astype(np.float64)
        self.timesteps: npt.NDArray[Any]  # int64 for DDIM, float32 for Euler: what the UNet is given
        self.sigmas: npt.NDArray[np.float32] = np.zeros(0, np.float32)  # Euler's noise levels, then 0
        if name == "DDIMScheduler":
            spacing = str(config.get("timestep_spacing", "leading"))
            self.timesteps = _spaced_timesteps(config, steps, spacing, ddim=True).astype(np.int64)
            self.final_alpha = 1.0 if config.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])
            self.ratio = n // steps
            clipped = config.get("clip_sample", True)
            self.clip = float(config.get("clip_sample_range", 1.0)) if clipped else None
            self.init_noise_sigma = 1.0
        else:
            spacing = str(config.get("timestep_spacing", "linspace"))
            ts = _spaced_timesteps(config, steps, spacing, ddim=False).astype(np.float32)
            full = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).astype(np.float32)
            sigmas = np.interp(ts.astype(np.float64), np.arange(n), full.astype(np.float64))
            at_min = config.get("final_sigmas_type") == "sigma_min"
            last = float(((1 - ac[0]) / ac[0]) ** 0.5) if at_min else 0.0
            self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
            self.timesteps = ts
            top = float(self.sigmas.max())
            self.init_noise_sigma = top if spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    def model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        """The UNet's input at step ``i`` (Euler divides by sqrt(sigma^2 + 1))."""
        if self.name == "DDIMScheduler":
            return sample
        sigma = self.sigmas[i]
        return (sample / np.float32((sigma**2 + 1) ** 0.5)).astype(np.float32)

    def step(self, output: np.ndarray, i: int, sample: np.ndarray) -> np.ndarray:
        """The sample after step ``i`` from the model's ``output`` (guided) on ``sample``."""
        if self.name == "DDIMScheduler":
            return self._ddim(output, i, sample)
        sigma, following = np.float32(self.sigmas[i]), np.float32(self.sigmas[i + 1])
        original: np.ndarray
        if self.prediction == "epsilon":
            original = sample - sigma * output
        elif self.prediction == "v_prediction":
            original = output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            original = output
        derivative = (sample - original) / sigma
        return np.asarray(sample + derivative * (following - sigma), np.float32)

    def _ddim(self, output: np.ndarray, i: int, sample: np.ndarray) -> np.ndarray:
        t = int(self.timesteps[i])
        prev = t - self.ratio
        a_t = np.float32(self.alphas_cumprod[t])
        a_prev = np.float32(self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha)
        b_t = np.float32(1) - a_t
        if self.prediction == "epsilon":
            original, eps = (sample - b_t**0.5 * output) / a_t**0.5, output
        elif self.prediction == "v_prediction":
            original = a_t**0.5 * sample - b_t**0.5 * output
            eps = a_t**0.5 * output + b_t**0.5 * sample
        else:
            original, eps = output, (sample - a_t**0.5 * output) / b_t**0.5
        if self.clip is not None:
            original = np.clip(original, -self.clip, self.clip)
        return (a_prev**0.5 * original + (np.float32(1) - a_prev) ** 0.5 * eps).astype(np.float32)


# --- CLIP's tokenizer ----------------------------------------------------------------------------------

_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
# Unicode's White_Space property (what \s means to the tokenizers library's regex engine).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


@lru_cache(maxsize=1)
def byte_symbols() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte value 0..255 (byte-level BPE's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def _kind(ch: str) -> str:
    if ch in _WHITESPACE:
        return "space"
    category = unicodedata.category(ch)
    return "letter" if category[0] == "L" else "number" if category[0] == "N" else "other"


def _split(text: str, specials: tuple[str, ...], numbers_one_by_one: bool) -> list[str]:
    """The matches of CLIP's pre-tokenizer pattern (``specials``, contractions, letters, one digit,
    other symbols) or, with ``numbers_one_by_one`` False, of GPT-2's (runs of digits), whitespace
    dropped: the regexes' leftmost-first alternation written out by hand."""
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        head = next((s for s in (*specials, *_CONTRACTIONS) if text.startswith(s, i)), None)
        if head is not None:
            pieces.append(head)
            i += len(head)
            continue
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        j = i + 1
        if not (kind == "number" and numbers_one_by_one):
            while j < n and _kind(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


@dataclass(frozen=True)
class Encoding:
    """A prompt's token ids (BOS, tokens, EOS, padding: ``max_length`` of them) and the words cut off."""

    ids: npt.NDArray[np.int64]
    truncated: tuple[str, ...]


class ClipTokenizer:
    """CLIP's byte-level BPE (``vocab.json`` + ``merges.txt``) as transformers' ``CLIPTokenizer`` runs it:
    NFC, whitespace collapsed, lower case; CLIP's word pattern; bytes to symbols; BPE with ``</w>`` at
    the end of each word; BOS + ids + EOS, cut and padded to ``max_length``."""

    def __init__(
        self, vocab: Mapping[str, int], merges: list[tuple[str, str]], max_length: int,
        bos: str, eos: str, pad: str, unk: str | None = None,
    ) -> None:
        self.vocab = dict(vocab)
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.max_length = int(max_length)
        if self.max_length < 2:
            raise TokenizerError(f"max_length must be at least 2, not {max_length}")
        missing = [t for t in (bos, eos, pad) if t not in self.vocab]
        if missing:
            raise TokenizerError(f"the tokenizer's vocabulary lacks its special token {missing[0]!r}")
        self.bos_id, self.eos_id, self.pad_id = self.vocab[bos], self.vocab[eos], self.vocab[pad]
        self.unk_id = self.vocab.get(unk) if unk else None
        self.specials = tuple(sorted({t for t in (bos, eos, pad, unk) if t and t in self.vocab}, key=len,
                                     reverse=True))
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(
        cls, vocab_file: Path, merges_file: Path, max_length: int, bos: str, eos: str, pad: str,
        unk: str | None = None,
    ) -> ClipTokenizer:
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
            lines = merges_file.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError) as exc:
            raise TokenizerError(
                f"cannot read the tokenizer ({vocab_file.name}, {merges_file.name}): {exc}"
            ) from exc
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_file} is not a JSON object of token -> id")
        merges: list[tuple[str, str]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip() or (number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise TokenizerError(f"{merges_file.name} line {number} is not a pair of symbols: {line!r}")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges, max_length, bos, eos, pad, unk)

    def words(self, text: str) -> list[tuple[str, list[int]]]:
        """Each word of ``text`` (CLIP's pre-tokenization) with its token ids; special tokens written
        in the text are their own ids, as in transformers."""
        if not isinstance(text, str):
            raise TokenizerError(f"prompt must be text, got {type(text).__name__}")
        out: list[tuple[str, list[int]]] = []
        for segment, special in self._special_segments(text):
            if special:
                out.append((segment, [self.vocab[segment]]))
                continue
            normal = unicodedata.normalize("NFC", segment)
            # one character at a time: no context-dependent final sigma, as in the tokenizers library
            normal = "".join(" " if ch in _WHITESPACE else ch.lower() for ch in normal)
            for piece in _split(normal, _CLIP_SPECIALS, numbers_one_by_one=True):
                for word in _split(piece, (), numbers_one_by_one=False):  # the byte-level step's own split
                    out.append((word, self._bpe(word)))
        return out

    def encode(self, text: str) -> Encoding:
        """``text`` as the text encoder's input: ``max_length`` ids, like
        ``tokenizer(text, padding="max_length", truncation=True)``."""
        room = self.max_length - 2
        ids: list[int] = []
        cut: list[str] = []
        for word, word_ids in self.words(text):
            if len(ids) + len(word_ids) > room:
                cut.append(word)
            ids.extend(word_ids)
        body = ids[:room]
        full = [self.bos_id, *body, self.eos_id]
        full += [self.pad_id] * (self.max_length - len(full))
        return Encoding(np.asarray(full, np.int64), tuple(cut))

    def _special_segments(self, text: str) -> list[tuple[str, bool]]:
        segments: list[tuple[str, bool]] = []
        start = i = 0
        while i < len(text):
            hit = next((s for s in self.specials if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                segments.append((text[start:i], False))
            segments.append((hit, True))
            i = start = i + len(hit)
        if start < len(text):
            segments.append((text[start:], False))
        return segments

    def _bpe(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols_of = byte_symbols()
        chars = [symbols_of[b] for b in word.encode("utf-8")]
        parts = [*chars[:-1], chars[-1] + "</w>"]
        while len(parts) > 1:
            pairs = enumerate(zip(parts, parts[1:], strict=False))
            ranked = [(self.ranks.get((a, b)), k) for k, (a, b) in pairs]
            known = [(r, k) for r, k in ranked if r is not None]
            if not known:
                break
            best = min(known)[0]
            pair = next((parts[k], parts[k + 1]) for r, k in known if r == best)
            merged: list[str] = []
            k = 0
            while k < len(parts):
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == pair:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        ids: list[int] = []
        for part in parts:
            tid = self.vocab.get(part, self.unk_id)
            if tid is None:
                raise TokenizerError(
                    f"the symbol {part!r} is not in the vocabulary and there is no unknown token"
                )
            ids.append(tid)
        if len(self._cache) < 10_000:
            self._cache[word] = ids
        return ids


# --- the manifest ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """``pipeline.json``: what the runtime needs besides the three ONNX files."""

    latent_channels: int
    vae_scale_factor: int  # pixels per latent cell
    unet_scale_factor: int  # the UNet's total down-sampling: latent sides must be multiples of it
    vae_scaling_factor: float  # latents are divided by it before the VAE decoder
    sample_size: int  # the UNet's default latent side
    max_length: int  # the tokenizer's model_max_length: every prompt is padded to it
    scheduler: str
    scheduler_config: dict[str, Any]
    tokenizer: dict[str, str]  # vocab, merges (paths in the folder), bos, eos, pad, unk
    default_steps: int = 50
    default_guidance: float = 7.5
    source: str = ""
    verification: dict[str, Any] | None = None

    @property
    def default_resolution(self) -> int:
        return self.sample_size * self.vae_scale_factor

    @property
    def resolution_multiple(self) -> int:
        return self.vae_scale_factor * self.unet_scale_factor

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "source": self.source,
            "components": {name: f"{name}.onnx" for name in COMPONENTS},
            "latent_channels": self.latent_channels, "vae_scale_factor": self.vae_scale_factor,
            "unet_scale_factor": self.unet_scale_factor, "vae_scaling_factor": self.vae_scaling_factor,
            "sample_size": self.sample_size, "default_resolution": self.default_resolution,
            "max_length": self.max_length, "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            "scheduler": {"class": self.scheduler, "config": self.scheduler_config},
            "tokenizer": self.tokenizer, "verification": self.verification,
        }

    @classmethod
    def from_json(cls, doc: Any, label: str) -> Manifest:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InvalidModelError(f"{label} is not a tierflow diffusion manifest (format {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise InvalidModelError(
                f"{label} has version {doc.get('version')!r}; this tierflow reads {VERSION}"
            )
        try:
            scheduler = doc["scheduler"]
            tokenizer = {str(k): str(v) for k, v in doc["tokenizer"].items() if v is not None}
            manifest = cls(
                latent_channels=int(doc["latent_channels"]), vae_scale_factor=int(doc["vae_scale_factor"]),
                unet_scale_factor=int(doc["unet_scale_factor"]),
                vae_scaling_factor=float(doc["vae_scaling_factor"]), sample_size=int(doc["sample_size"]),
                max_length=int(doc["max_length"]), scheduler=str(scheduler["class"]),
                scheduler_config=dict(scheduler["config"]), tokenizer=tokenizer,
                default_steps=int(doc.get("default_steps", 50)),
                default_guidance=float(doc.get("default_guidance", 7.5)), source=str(doc.get("source", "")),
                verification=doc.get("verification"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidModelError(f"{label} is malformed: {type(exc).__name__}: {exc}") from exc
        for key in ("vocab", "merges", "bos", "eos", "pad"):
            if key not in tokenizer:
                raise InvalidModelError(f"{label} is malformed: the tokenizer has no {key!r}")
        return manifest


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an exported pipeline folder, or a one-line error saying what is wrong."""
    if not directory.exists():
        raise ModelNotFoundError(f"no such folder: {directory}")
    if not directory.is_dir():
        raise InvalidModelError(f"{directory} is a file; give the folder `tierflow export` wrote")
    path = directory / MANIFEST
    if not path.is_file():
        raise InvalidModelError(
            f"{directory} is not an exported diffusion pipeline (no {MANIFEST}); "
            "make one with `tierflow export <diffusers folder> -o <folder>`"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{path} is not readable JSON: {exc}") from exc
    return Manifest.from_json(doc, str(path))


# --- the pipeline ----------------------------------------------------------------------------------

Sessions = dict[str, ort.InferenceSession]


class DiffusionPipeline:
    """An exported Stable-Diffusion pipeline: prompt -> image on ONNX Runtime."""

    def __init__(self, manifest: Manifest, tokenizer: ClipTokenizer, sessions: Sessions) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.sessions = sessions
        check_scheduler(manifest.scheduler, manifest.scheduler_config)

    @classmethod
    def open(cls, directory: str | Path, options: SessionOptions | None = None) -> DiffusionPipeline:
        """Open the folder ``tierflow export`` wrote for a diffusers pipeline."""
        folder = Path(directory).expanduser()
        manifest = read_manifest(folder)
        check_scheduler(manifest.scheduler, manifest.scheduler_config)
        needed = [f"{name}.onnx" for name in COMPONENTS]
        needed += [manifest.tokenizer["vocab"], manifest.tokenizer["merges"]]
        for name in needed:
            if not (folder / name).is_file():
                raise InvalidModelError(f"{folder} is incomplete: {name} is missing")
        tok = manifest.tokenizer
        tokenizer = ClipTokenizer.from_files(
            folder / tok["vocab"], folder / tok["merges"], manifest.max_length,
            tok["bos"], tok["eos"], tok["pad"], tok.get("unk"),
        )
        sessions: Sessions = {}
        for name, (inputs, outputs) in COMPONENTS.items():
            session = open_session(folder / f"{name}.onnx", options)
            have_in = {i.name for i in session.get_inputs()}
            have_out = {o.name for o in session.get_outputs()}
            if not set(inputs) <= have_in or not set(outputs) <= have_out:
                raise UnsupportedModelError(
                    f"{folder / name}.onnx has inputs {sorted(have_in)} and outputs {sorted(have_out)}; "
                    f"expected {list(inputs)} -> {list(outputs)}"
                )
            sessions[name] = session
        return cls(manifest, tokenizer, sessions)

    @property
    def provider(self) -> str:
        return active_provider(self.sessions["unet"])

    def check_resolution(self, resolution: int | None) -> int:
        """``resolution`` (None: the model's default) checked against the model's multiple."""
        m = self.manifest
        if resolution is None:
            return m.default_resolution
        if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
            raise InvalidInputError(f"resolution must be an integer number of pixels, got {resolution!r}")
        if not 0 < resolution <= MAX_RESOLUTION:
            raise InvalidInputError(f"resolution {resolution} is out of range: 1..{MAX_RESOLUTION} px")
        if resolution % m.resolution_multiple:
            raise InvalidInputError(
                f"resolution {resolution} is not a multiple of {m.resolution_multiple} (the VAE's factor "
                f"{m.vae_scale_factor} times the UNet's {m.unet_scale_factor})"
            )
        return int(resolution)

    def noise(self, seed: int, resolution: int | None = None) -> npt.NDArray[np.float32]:
        """The initial latents for ``seed``: standard normal [1, C, side, side] (before the scheduler's
        ``init_noise_sigma``), from numpy's default generator."""
        side = self.check_resolution(resolution) // self.manifest.vae_scale_factor
        rng = np.random.default_rng(int(seed) % 2**63)
        shape = (1, self.manifest.latent_channels, side, side)
        return rng.standard_normal(shape, dtype=np.float32)

    def render(
        self, prompt: str, latents: npt.NDArray[np.float32], *, steps: int | None = None,
        guidance: float | None = None, timings: list[tuple[str, float]] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Denoise ``latents`` (as :meth:`noise` makes them) under ``prompt`` and decode them: the image
        [1, 3, H, W] in about [-1, 1], unclipped. ``timings`` collects (stage, seconds)."""
        m = self.manifest
        n_steps = m.default_steps if steps is None else steps
        integral = isinstance(n_steps, int | np.integer) and not isinstance(n_steps, bool)
        if not integral or not 1 <= n_steps <= MAX_STEPS:
            raise InvalidInputError(f"steps must be an integer 1..{MAX_STEPS}, not {steps!r}")
        g = m.default_guidance if guidance is None else guidance
        if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or not 0 <= g <= 100:
            raise InvalidInputError(f"guidance must be a number in 0..100, not {guidance!r}")
        latents = np.asarray(latents, np.float32)
        if latents.ndim != 4 or latents.shape[:2] != (1, m.latent_channels):
            raise InvalidInputError(
                f"latents must be [1, {m.latent_channels}, h, w], not {list(latents.shape)}"
            )
        record = timings if timings is not None else []
        schedule = Schedule(m.scheduler, m.scheduler_config, int(n_steps))
        guided = g > 1.0  # diffusers' do_classifier_free_guidance
        prompts = ["", prompt] if guided else [prompt]
        ids = np.stack([self.tokenizer.encode(p).ids for p in prompts])
        (hidden,) = self._run("text_encoder", record, [LAST_HIDDEN_STATE], {INPUT_IDS: ids})
        x = (latents * np.float32(schedule.init_noise_sigma)).astype(np.float32)
        batch = len(prompts)
        unet_s = 0.0
        for i, t in enumerate(schedule.timesteps):
            model_in = schedule.model_input(x, i)
            feeds = {
                SAMPLE: np.ascontiguousarray(np.concatenate([model_in] * batch)),
                TIMESTEP: np.full(batch, t, np.float32),
                ENCODER_HIDDEN_STATES: hidden,
            }
            step_s: list[tuple[str, float]] = []
            (out,) = self._run("unet", step_s, [NOISE_PRED], feeds)
            unet_s += step_s[0][1]
            out = np.asarray(out, np.float32)
            pred = out[:1] + np.float32(g) * (out[1:] - out[:1]) if guided else out
            x = schedule.step(pred, i, x)
        record.append(("unet", unet_s))
        scaled = (x / np.float32(m.vae_scaling_factor)).astype(np.float32)
        (image,) = self._run("vae_decoder", record, [IMAGE], {LATENTS: scaled})
        return np.asarray(image, np.float32)

    def generate(
        self, prompt: str, *, steps: int | None = None, guidance: float | None = None,
        seed: int | None = None, resolution: int | None = None,
    ) -> ImageResult:
        """Paint ``prompt`` (``resolution`` px square, default the model's own) in ``steps`` steps with
        classifier-free ``guidance`` (at most 1: none); ``seed`` fixes the noise."""
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be text, got {type(prompt).__name__}")
        side = self.check_resolution(resolution)
        chosen = int(np.random.SeedSequence().entropy % 2**62) if seed is None else int(seed)  # type: ignore[operator]
        timings: list[tuple[str, float]] = []
        image = self.render(prompt, self.noise(chosen, side), steps=steps, guidance=guidance, timings=timings)
        return ImageResult(
            pixels=to_uint8(image), prompt=prompt, resolution=side, refined=False, seed=chosen,
            provider=self.provider, elapsed_s=sum(s for _, s in timings),
            ignored_words=self.tokenizer.encode(prompt).truncated,
            stages=tuple((name, round(s, 6)) for name, s in timings),
        )

    def _run(
        self, name: str, record: list[tuple[str, float]], outputs: list[str], feeds: dict[str, np.ndarray],
    ) -> list[Any]:
        started = time.perf_counter()
        try:
            result: list[Any] = self.sessions[name].run(outputs, feeds)
        except Exception as exc:  # ORT's own exception types
            raise InvalidInputError(f"{name} rejected its input: {' '.join(str(exc).split())[:300]}") from exc
        record.append((name, time.perf_counter() - started))
        return result
