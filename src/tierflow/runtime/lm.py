"""Causal-LM generation on ONNX Runtime with an explicit per-layer KV cache.

The loop feeds the whole prompt once (prefill), then one token per step,
passing each layer's ``present`` tensors back as the next ``past``: no token
is ever recomputed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import onnxruntime as ort

from tierflow.errors import InvalidInputError, TokenizerError
from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.model.tokenizer import TextStream, Tokenizer
from tierflow.runtime.session import (
    SessionOptions,
    active_provider,
    input_specs,
    metadata,
    open_session,
    output_specs,
)

KVCache = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token.

    The defaults are llama.cpp's and Ollama's: temperature 0.8, top-k 40, top-p 0.95 and a
    repetition penalty of 1.1 over the last 64 tokens (prompt included), so a small model does
    not loop. ``temperature == 0`` picks the most likely token (after the penalty);
    :meth:`greedy` is the deterministic path without the penalty (pure argmax).
    """

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 40  # 0: all tokens
    top_p: float = 0.95  # 1: all tokens
    repeat_penalty: float = 1.1  # 1: off; > 1 makes recent tokens less likely
    repeat_last_n: int = 64  # how many recent tokens the penalty looks at (0: off)
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise InvalidInputError("max_new_tokens must be >= 0")
        if not self.temperature >= 0:  # also refuses NaN
            raise InvalidInputError("temperature must be >= 0")
        if self.top_k < 0:
            raise InvalidInputError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InvalidInputError("top_p must be in (0, 1]")
        if not 0 < self.repeat_penalty < math.inf:
            raise InvalidInputError("repeat_penalty must be > 0 (1 = off)")
        if self.repeat_last_n < 0:
            raise InvalidInputError("repeat_last_n must be >= 0")
        if self.seed is not None and self.seed < 0:
            raise InvalidInputError("seed must be >= 0")

    @classmethod
    def greedy(cls, max_new_tokens: int = 64, **options: Any) -> SamplingConfig:
        """Always the most likely token, no repetition penalty: the same tokens on every run."""
        return cls(max_new_tokens=max_new_tokens, **{"temperature": 0.0, "repeat_penalty": 1.0, **options})

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


class SamplingOptions(TypedDict, total=False):
    """The keywords of ``generate(prompt, **options)``: any field of :class:`SamplingConfig`."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int | None
    stop_token_ids: tuple[int, ...]


def sampling_config(config: SamplingConfig | None, options: Mapping[str, Any]) -> SamplingConfig:
    """``config`` (default: :class:`SamplingConfig`'s defaults) with ``options`` replacing its fields."""
    base = config if config is not None else SamplingConfig()
    if not options:
        return base
    unknown = sorted(set(options) - {f.name for f in fields(SamplingConfig)})
    if unknown:
        known = ", ".join(SamplingOptions.__annotations__)
        raise InvalidInputError(f"unknown generation option {unknown[0]!r} (options: {known})")
    return replace(base, **options)


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    new_ids: list[int]
    text: str | None
    provider: str
    prefill_s: float
    decode_s: float
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: new tokens after the first, per second of decoding."""
        steps = max(len(self.new_ids) - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 else 0.0


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """llama.cpp's repeat penalty: each token seen in ``recent`` has its logit divided by ``penalty``
    when positive and multiplied by it when negative (once per token, however often it was seen)."""
    out = logits.astype(np.float64)
    if not _penalizes(recent, penalty):
        return out
    seen = np.unique(np.asarray(recent, dtype=np.int64))
    seen = seen[(seen >= 0) & (seen < out.shape[-1])]
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def _penalizes(recent: Sequence[int], penalty: float) -> bool:
    """Whether the repeat penalty changes any logit."""
    return penalty != 1.0 and len(recent) > 0


def pick_token(
    logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator, recent: Sequence[int] = ()
) -> int:
    """Choose one token id from a 1-D logits vector; ``recent`` are the tokens before it (prompt included)."""
    window = recent[-config.repeat_last_n :] if config.repeat_last_n else ()
    if config.temperature == 0 and not _penalizes(window, config.repeat_penalty):
        return int(np.argmax(logits))  # nothing to adjust: the float64 copy would change no comparison
    adjusted = apply_repeat_penalty(logits, window, config.repeat_penalty)
    if config.temperature == 0:
        return int(np.argmax(adjusted))
    with np.errstate(over="ignore"):
        scaled = adjusted / config.temperature
    top = scaled.max()
    if not np.isfinite(top):  # a temperature so small that the scaled logits overflow: the argmax
        return int(np.argmax(adjusted))
    if 0 < config.top_k < len(scaled):
        kth = np.partition(scaled, -config.top_k)[-config.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - top)
    probs /= probs.sum()
    if config.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, config.top_p)) + 1]
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(len(probs), p=probs))


class CausalLM:
    """A causal LM in tierflow's ONNX form (see :mod:`tierflow.model.lm_contract`)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.signature = lc.LMSignature.from_specs(input_specs(session), output_specs(session))
        meta = metadata(session)
        doc = md.tokenizer(meta)
        self.tokenizer: Tokenizer | None = Tokenizer.from_json(doc) if doc else None
        self.max_seq_len: int | None = md.max_seq_len(meta)
        self._kv_np_dtype = np.float16 if self.signature.kv_dtype == "float16" else np.float32
        self._input_names = {i.name for i in session.get_inputs()}

    @classmethod
    def open(cls, model: str | Path | bytes, options: SessionOptions | None = None) -> CausalLM:
        return cls(open_session(model, options))

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    def empty_cache(self, batch: int = 1) -> KVCache:
        sig = self.signature
        shape = (batch, sig.kv_heads, 0, sig.head_dim)
        return [
            (np.zeros(shape, self._kv_np_dtype), np.zeros(shape, self._kv_np_dtype))
            for _ in range(sig.num_layers)
        ]

    def forward(self, ids: np.ndarray, past: KVCache) -> tuple[np.ndarray, KVCache]:
        """Run ``ids`` [batch, seq] after ``past``; return logits [batch, seq, vocab] and the new cache."""
        if ids.ndim != 2 or ids.dtype != np.int64:
            raise InvalidInputError(f"input_ids must be int64 [batch, seq], got {ids.dtype} {ids.shape}")
        past_len = past[0][0].shape[2]
        batch, seq = ids.shape
        feeds: dict[str, np.ndarray] = {lc.INPUT_IDS: ids}
        if self.signature.has_attention_mask:
            feeds[lc.ATTENTION_MASK] = np.ones((batch, past_len + seq), np.int64)
        if self.signature.has_position_ids:
            feeds[lc.POSITION_IDS] = np.broadcast_to(
                np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)
            ).copy()
        for i, (k, v) in enumerate(past):
            feeds[lc.past_name(i, "key")] = k
            feeds[lc.past_name(i, "value")] = v
        names = [lc.LOGITS] + [
            lc.present_name(i, kind) for i in range(self.signature.num_layers) for kind in ("key", "value")
        ]
        outs = self.session.run(names, feeds)
        cache = [(outs[1 + 2 * i], outs[2 + 2 * i]) for i in range(self.signature.num_layers)]
        return outs[0], cache

    def stream_ids(self, prompt_ids: list[int], config: SamplingConfig) -> Iterator[int]:
        """Yield new token ids one by one, using the KV cache between steps."""
        if not prompt_ids:
            raise InvalidInputError("the prompt has no tokens")
        budget = config.max_new_tokens
        if self.max_seq_len is not None:
            if len(prompt_ids) >= self.max_seq_len:
                raise InvalidInputError(
                    f"prompt is {len(prompt_ids)} tokens; this model's context is {self.max_seq_len} tokens"
                )
            budget = min(budget, self.max_seq_len - len(prompt_ids))
        rng = np.random.default_rng(config.seed)
        past = self.empty_cache()
        ids = np.asarray([prompt_ids], dtype=np.int64)
        history = list(prompt_ids)  # what the repetition penalty looks back on
        for _ in range(budget):
            logits, past = self.forward(ids, past)
            token = pick_token(logits[0, -1], config, rng, history)
            history.append(token)
            yield token
            if token in config.stop_token_ids:
                return
            ids = np.asarray([[token]], dtype=np.int64)

    def generate_ids(
        self,
        prompt_ids: list[int],
        config: SamplingConfig,
        on_token: Callable[[int], None] | None = None,
    ) -> GenerationResult:
        start = time.perf_counter()
        first_at: float | None = None
        new: list[int] = []
        for token in self.stream_ids(prompt_ids, config):
            if first_at is None:
                first_at = time.perf_counter()
            new.append(token)
            if on_token:
                on_token(token)
        end = time.perf_counter()
        first_at = first_at or end
        return GenerationResult(
            prompt_ids=list(prompt_ids),
            new_ids=new,
            text=None,
            provider=self.provider,
            prefill_s=first_at - start,
            decode_s=end - first_at,
        )

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise TokenizerError("this model carries no tokenizer; pass token ids instead of text")
        return self.tokenizer

    def generate(
        self, prompt: str, config: SamplingConfig, on_text: Callable[[str], None] | None = None
    ) -> GenerationResult:
        """Generate a continuation of ``prompt``; ``on_text`` receives the text as it grows."""
        tok = self.require_tokenizer()
        prompt_ids = tok.encode(prompt)
        seen: list[int] = []
        stream = TextStream(tok)

        def emit(token: int) -> None:
            seen.append(token)
            delta = stream.add(seen)
            if on_text and delta:
                on_text(delta)

        result = self.generate_ids(prompt_ids, config, on_token=emit if on_text else None)
        rest = stream.finish(seen)
        if on_text and rest:
            on_text(rest)
        result.text = tok.decode(result.new_ids)
        return result
