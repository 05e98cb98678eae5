"""How much slower a Llama's layer spans compute in a split's three processes than back to back in one:
a loopback deployment's split (no emulated links) decodes 64 tokens, then the same three spans run
back to back in this process for 64 tokens, alternating, round by round.

    python bench/trials/split_compute.py [ROUNDS] [SHAPE]

The split's per-span compute is what each tier reports for its own ``session.run`` (``compute_s``),
per decode step (a one-token run's prefill subtracted); the back-to-back figure times the same
calls here. Prints each round's sums and their ratio, then the median ratio (docs/BENCHMARKS.md).
Run it under ``taskset -c 0`` to keep every process on one vCPU.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from tierflow.bench.entry import device_entry, finish
from tierflow.bench.generate import PROMPT, default_models, placement_spans
from tierflow.context.ids import new_context_id
from tierflow.engine.sharded import ShardedLM, Spans
from tierflow.model.lm_layers import Span
from tierflow.node.deploy import deploy_local
from tierflow.runtime.lm import SamplingConfig
from tierflow.runtime.lm_span import SpanRunner
from tierflow.runtime.session import SessionOptions

TOKENS = 64


def back_to_back_ms(runner: SpanRunner, spans: list[Span], prompt: list[int]) -> list[float]:
    """Each span's mean milliseconds per decode step, the spans run one after another here (a mean,
    as the split's figure is: its tiers report sums)."""
    kvs = [runner.empty_kv(span) for span in spans]
    ids = np.asarray([prompt], np.int64)
    seconds: list[list[float]] = [[] for _ in spans]
    for t in range(TOKENS):
        hidden = None
        for i, span in enumerate(spans):
            started = time.perf_counter()
            out = runner.step(span, ids, kvs[i], hidden)
            if t:  # the prompt's step is not a decode step
                seconds[i].append(time.perf_counter() - started)
            kvs[i], hidden = out.present, out.hidden
        assert out.logits is not None
        ids = np.array([[int(np.argmax(out.logits[0, -1]))]], np.int64)
    return [statistics.fmean(s) * 1e3 for s in seconds]


async def split_ms(lm: ShardedLM, spans: Spans, prompt: list[int]) -> list[float]:
    """Each tier's milliseconds of span compute per decode step in the split (prefill subtracted)."""
    runs = []
    for tokens in (TOKENS, 1):
        context = new_context_id()
        runs.append(await finish(lm, context, prompt, 0, spans, SamplingConfig.greedy(tokens)))
        await lm.drop(context)
    full, prefill = (run.stats.compute_s for run in runs)
    return [(full[t.value] - prefill[t.value]) / (TOKENS - 1) * 1e3 for t in spans]


async def rounds(n: int, shape: str) -> None:
    model = default_models(shape)[1]
    certs = Path(tempfile.mkdtemp()) / "pki"
    deployment = deploy_local(model.path, certs, None, threads=1, startup_timeout=600)
    try:
        proto = onnx.load(str(model.path))
        runner = SpanRunner(proto, SessionOptions(intra_op_threads=1))
        async with device_entry(model.path, model.name, deployment, model=proto) as lm:
            prompt = lm.tokenizer.encode(PROMPT)
            spans = placement_spans("split", lm.num_layers)
            await split_ms(lm, spans, prompt)  # warm-up: lanes opened, sessions loaded
            back_to_back_ms(runner, list(spans.values()), prompt)
            ratios = []
            for _ in range(n):
                split = await split_ms(lm, spans, prompt)
                alone = back_to_back_ms(runner, list(spans.values()), prompt)
                ratios.append(sum(split) / sum(alone))
                print(
                    f"split spans {' + '.join(f'{x:.2f}' for x in split)} = {sum(split):.2f} ms, "
                    f"back to back {' + '.join(f'{x:.2f}' for x in alone)} = {sum(alone):.2f} ms, "
                    f"ratio {ratios[-1]:.3f}",
                    flush=True,
                )
            print(f"split over back to back, median of {n}: {statistics.median(ratios):.3f}")
    finally:
        deployment.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    asyncio.run(rounds(count, sys.argv[2] if len(sys.argv) > 2 else "24x1024"))
