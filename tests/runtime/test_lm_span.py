"""A layer span's graph cut into its preamble (what the step's shape alone decides: mask, rotary
angles, positions) and its body, and the preamble's results kept per step shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tierflow.model.lm_layers import Span
from tierflow.model.registry import resolve_model
from tierflow.runtime.lm import CausalLM
from tierflow.runtime.lm_span import SpanRunner, StepTensorCache
from tierflow.runtime.session import SessionOptions

ONE_THREAD = SessionOptions(intra_op_threads=1)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.hf_models import exported

    return exported(tmp_path_factory.mktemp("llama"), "llama", layers=4)


def whole_logits(model: Path, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and each step's last logits from the unsplit graph."""
    lm = CausalLM.open(model, ONE_THREAD)
    past = lm.empty_cache()
    ids = np.asarray([prompt], np.int64)
    tokens, logits = [], []
    for _ in range(steps):
        out, past = lm.forward(ids, past)
        logits.append(out[0, -1])
        tokens.append(int(np.argmax(out[0, -1])))
        ids = np.asarray([[tokens[-1]]], np.int64)
    return tokens, logits


def spans_logits(
    runner: SpanRunner, spans: list[Span], prompt: list[int], steps: int
) -> tuple[list[int], list[np.ndarray]]:
    """The same through ``spans`` run one after another, the hidden state handed on."""
    kv = [runner.empty_kv(span) for span in spans]
    ids = np.asarray([prompt], np.int64)
    tokens, logits = [], []
    for _ in range(steps):
        hidden = None
        for i, span in enumerate(spans):
            out = runner.step(span, ids, kv[i], hidden)
            kv[i], hidden = out.present, out.hidden
        assert out.logits is not None
        logits.append(out.logits[0, -1])
        tokens.append(int(np.argmax(out.logits[0, -1])))
        ids = np.asarray([[tokens[-1]]], np.int64)
    return tokens, logits


@pytest.mark.export
def test_every_span_of_an_exported_llama_sets_its_mask_and_rotary_angles_apart(llama: Path) -> None:
    runner = SpanRunner(onnx.load(str(llama)), ONE_THREAD)
    for span in (Span(0, 1), Span(2, 3)):
        opened = runner.session(span)
        assert opened.preamble is not None
        assert opened.step_tensors  # what the body reads of the preamble ...
        assert set(opened.step_tensors) <= set(opened.body_inputs)
        # ... in place of the mask and the positions, which only the preamble reads now
        assert "attention_mask" not in opened.body_inputs
        assert "position_ids" not in opened.body_inputs


@pytest.mark.export
def test_two_spans_with_kept_preambles_give_the_unsplit_model_s_logits(llama: Path) -> None:
    prompt = [5, 9, 2, 7, 11, 3]
    tokens, logits = whole_logits(llama, prompt, 12)
    runner = SpanRunner(onnx.load(str(llama)), ONE_THREAD)
    spans = [Span(0, 1), Span(2, 3)]
    for _ in range(2):  # the second run reads every decode step's preamble from the cache
        got_tokens, got_logits = spans_logits(runner, spans, prompt, 12)
        assert got_tokens == tokens
        for got, want in zip(got_logits, logits, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    cache = runner.step_cache(spans[1])
    assert cache.hits == 11  # the 11 decode steps of the second run (a prompt's step is not kept)
    assert cache.misses == 11


@pytest.mark.export
def test_a_kept_preamble_is_never_used_for_a_step_of_another_length(llama: Path) -> None:
    """Contexts at different lengths take turns on one runner: each gets its own length's mask."""
    runner = SpanRunner(onnx.load(str(llama)), ONE_THREAD)
    span = Span(0, 3)
    short, long = [4, 8], [4, 8, 15, 16, 23, 42, 6]
    want_short, _ = whole_logits(llama, short, 6)
    want_long, _ = whole_logits(llama, long, 6)
    kv = {"short": runner.empty_kv(span), "long": runner.empty_kv(span)}
    ids = {"short": np.asarray([short], np.int64), "long": np.asarray([long], np.int64)}
    got: dict[str, list[int]] = {"short": [], "long": []}
    for _ in range(6):
        for name in ("short", "long", "short"):  # the short one twice: it catches up with its own steps
            if len(got[name]) == 6:
                continue
            out = runner.step(span, ids[name], kv[name])
            assert out.logits is not None
            kv[name] = out.present
            got[name].append(int(np.argmax(out.logits[0, -1])))
            ids[name] = np.asarray([[got[name][-1]]], np.int64)
    assert got == {"short": want_short, "long": want_long}


def test_demo_lm_spans_give_the_unsplit_logits_with_and_without_a_preamble() -> None:
    """demo-lm adds learned position embeddings before its first layer: the first span's preamble is
    their lookup; its later layers read nothing that the step's shape alone decides."""
    model = resolve_model("demo-lm")
    prompt = [12, 40, 7, 33]
    tokens, logits = whole_logits(model, prompt, 8)
    runner = SpanRunner(onnx.load(str(model)), ONE_THREAD)
    last = runner.num_layers - 1
    spans = [Span(0, 1), Span(2, last)]
    assert runner.session(spans[0]).preamble is not None
    assert runner.session(spans[1]).preamble is None
    for _ in range(2):
        got_tokens, got_logits = spans_logits(runner, spans, prompt, 8)
        assert got_tokens == tokens
        for got, want in zip(got_logits, logits, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_the_cache_drops_the_least_recently_used_shapes_past_its_bytes() -> None:
    entry = 4 * 1024  # one float32 array of 1024 values
    cache = StepTensorCache(capacity_bytes=2 * entry)
    for length in (1, 2):
        cache.put((1, length, 1), {"t": np.full(1024, length, np.float32)})
    assert cache.get((1, 1, 1)) is not None  # now the most recent of the two
    cache.put((1, 3, 1), {"t": np.zeros(1024, np.float32)})
    assert cache.get((1, 2, 1)) is None
    kept = cache.get((1, 1, 1))
    assert kept is not None and kept["t"][0] == 1
    assert cache.held_bytes == 2 * entry


def test_kept_results_are_read_only() -> None:
    cache = StepTensorCache()
    cache.put((1, 5, 1), {"mask": np.ones((1, 1, 1, 6), np.float32)})
    kept = cache.get((1, 5, 1))
    assert kept is not None
    with pytest.raises(ValueError):
        kept["mask"][0, 0, 0, 0] = 0.0
