"""What cutting a Llama into spans costs in one process, before any message crosses: the unsplit
graph (``CausalLM``), the span runner holding every layer, and the split's three spans run back to
back, each decoding 64 tokens greedily, alternating, round by round.

    python bench/trials/span_graphs.py [ROUNDS] [SHAPE]

Prints each round's milliseconds per decode step and the medians of the rounds' ratios over the
unsplit graph (docs/BENCHMARKS.md). One ONNX Runtime thread.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import onnx

from tierflow.bench.generate import PROMPT, default_models, placement_spans
from tierflow.model.lm_layers import Span
from tierflow.runtime.lm import CausalLM
from tierflow.runtime.lm_span import SpanRunner
from tierflow.runtime.session import SessionOptions

TOKENS = 64


def unsplit_ms(lm: CausalLM, prompt: list[int]) -> float:
    past = lm.empty_cache()
    ids = np.asarray([prompt], np.int64)
    started = 0.0
    for t in range(TOKENS):
        if t == 1:
            started = time.perf_counter()
        logits, past = lm.forward(ids, past)
        ids = np.asarray([[int(np.argmax(logits[0, -1]))]], np.int64)
    return (time.perf_counter() - started) / (TOKENS - 1) * 1e3


def spans_ms(runner: SpanRunner, spans: list[Span], prompt: list[int]) -> float:
    kv = [runner.empty_kv(span) for span in spans]
    ids = np.asarray([prompt], np.int64)
    started = 0.0
    for t in range(TOKENS):
        if t == 1:
            started = time.perf_counter()
        hidden = None
        for i, span in enumerate(spans):
            out = runner.step(span, ids, kv[i], hidden)
            kv[i], hidden = out.present, out.hidden
        assert out.logits is not None
        ids = np.asarray([[int(np.argmax(out.logits[0, -1]))]], np.int64)
    return (time.perf_counter() - started) / (TOKENS - 1) * 1e3


def main(rounds: int, shape: str) -> None:
    model = default_models(shape)[1]
    options = SessionOptions(intra_op_threads=1)
    lm = CausalLM.open(model.path, options)
    runner = SpanRunner(onnx.load(str(model.path)), options)
    prompt = lm.require_tokenizer().encode(PROMPT)
    whole = [Span(0, runner.num_layers - 1)]
    three = list(placement_spans("split", runner.num_layers).values())
    unsplit_ms(lm, prompt), spans_ms(runner, whole, prompt), spans_ms(runner, three, prompt)  # warm-up
    full_over, three_over = [], []
    for _ in range(rounds):
        base = unsplit_ms(lm, prompt)
        full, split = spans_ms(runner, whole, prompt), spans_ms(runner, three, prompt)
        full_over.append(full / base)
        three_over.append(split / base)
        print(f"unsplit graph {base:.3f} ms, one span {full:.3f} ms, three spans {split:.3f} ms", flush=True)
    print(
        f"over the unsplit graph, medians of {rounds}: one span {statistics.median(full_over):.3f}, "
        f"three spans {statistics.median(three_over):.3f}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6, sys.argv[2] if len(sys.argv) > 2 else "8x512")
