"""How much slower a layer span computes right after its core idled: the 8x512 Llama's split spans
(0-1, 2-4, 5-7) run back to back in one process, then with a 2 ms sleep before each span, against
the whole model decoding in the same process; 64 tokens a run, alternating.

    python bench/trials/idle_gap.py [RUNS]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import onnx

from tierflow.bench.generate import default_models
from tierflow.model.lm_layers import Span
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.lm_span import SpanRunner
from tierflow.runtime.session import SessionOptions

SPANS = (Span(0, 1), Span(2, 4), Span(5, 7))


def spans_per_token(runners: list[tuple[SpanRunner, Span]], sleep_s: float, tokens: int = 64) -> float:
    kvs = [runner.empty_kv(span) for runner, span in runners]
    ids = np.arange(5, 23, dtype=np.int64)[None]
    computing = []
    for t in range(tokens + 1):
        spent, hidden = 0.0, None
        for i, (runner, span) in enumerate(runners):
            if sleep_s:
                time.sleep(sleep_s)
            started = time.perf_counter()
            out = runner.step(span, ids, kvs[i], hidden)
            spent += time.perf_counter() - started
            kvs[i], hidden = out.present, out.hidden
        assert out.logits is not None
        ids = np.array([[int(np.argmax(out.logits[0, -1]))]], np.int64)
        if t:  # the prompt's step is not a decode step
            computing.append(spent)
    return statistics.mean(computing)


def main(runs: int) -> None:
    model = default_models("8x512")[1]
    options = SessionOptions(intra_op_threads=1)
    whole = CausalLM.open(model.path, options)
    proto = onnx.load(str(model.path))
    runners = [(SpanRunner(proto, options), span) for span in SPANS]
    config = SamplingConfig.greedy(64)
    prompt = list(range(5, 23))
    whole.generate_ids(prompt, config)
    spans_per_token(runners, 0.0)
    hot, idle = [], []
    for _ in range(runs):
        one = 1 / whole.generate_ids(prompt, config).tokens_per_s
        hot.append(spans_per_token(runners, 0.0) / one)
        idle.append(spans_per_token(runners, 0.002) / one)
    print(f"spans back to back over the whole model: {statistics.median(hot):.3f}")
    print(f"spans after a 2 ms sleep each over the whole model: {statistics.median(idle):.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
