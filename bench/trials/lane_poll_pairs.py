"""Lane polling on and off, side by side: two loopback deployments of the 8x512 Llama (one started
with ``--lane-poll-ms 0``, its entry point's lanes set the same), their splits decoding 64 tokens in
alternating pairs, each first every other pair, with the one-process model after each pair.

    python bench/trials/lane_poll_pairs.py [PAIRS] [SHAPE]

Prints each pair's ratio (polling over not) and the medians (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from tierflow.bench.entry import device_entry, finish
from tierflow.bench.generate import PROMPT, default_models, placement_spans
from tierflow.context.ids import new_context_id
from tierflow.node.deploy import deploy_local
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions


async def pairs(n: int, shape: str) -> None:
    model = default_models(shape)[1]
    certs = Path(tempfile.mkdtemp()) / "pki"
    polling = deploy_local(model.path, certs, None, threads=1, startup_timeout=600)
    sleeping = deploy_local(model.path, certs, None, threads=1, startup_timeout=600, lane_poll_ms=0)
    try:
        local = CausalLM.open(model.path, SessionOptions(intra_op_threads=1))
        async with (
            device_entry(model.path, model.name, polling) as on,
            device_entry(model.path, model.name, sleeping, lane_poll_ms=0) as off,
        ):
            ids = on.tokenizer.encode(PROMPT)
            spans = placement_spans("split", on.num_layers)
            config = SamplingConfig.greedy(64)
            for lm in (on, off):  # warm-up: lanes opened, sessions loaded
                await finish(lm, new_context_id(), ids, 0, spans, config)
            local.generate_ids(ids, config)
            rates: dict[bool, list[float]] = {True: [], False: []}
            ratios, one = [], []
            for i in range(n):
                got = {}
                for poll in (True, False) if i % 2 == 0 else (False, True):
                    outcome = await finish(on if poll else off, new_context_id(), ids, 0, spans, config)
                    got[poll] = outcome.tokens_per_s
                    rates[poll].append(got[poll])
                one.append(local.generate_ids(ids, config).tokens_per_s)
                ratios.append(got[True] / got[False])
            print("polling over not, by pair:", [round(r, 3) for r in ratios])
            print(
                f"median {statistics.median(ratios):.3f}; tokens/s polling "
                f"{statistics.median(rates[True]):.1f}, not {statistics.median(rates[False]):.1f}, "
                f"one process {statistics.median(one):.1f}"
            )
    finally:
        polling.stop()
        sleeping.stop()


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    asyncio.run(pairs(count, sys.argv[2] if len(sys.argv) > 2 else "8x512"))
