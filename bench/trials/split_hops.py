"""Where a split token's time goes, from what the tiers report: a loopback deployment's split (no
emulated links) decodes 64 tokens, and each round prints the milliseconds per decode step of the
whole token, of each tier's span compute, of each hop (what the tier before it waited, less all the
time the tier after it spent: the two crossings and the forwarding around them) and what is left
(the entry point between steps, the last tier's sampling).

    python bench/trials/split_hops.py [ROUNDS] [SHAPE] [LANE_POLL_MS]

``LANE_POLL_MS`` sets every lane's polling limit, the nodes' and the entry point's (default: a
node's). A one-token run's figures (the prompt's step) are subtracted, as `tierflow bench
generate` does (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import onnx

from tierflow.bench.entry import device_entry, finish
from tierflow.bench.generate import PROMPT, default_models, placement_spans
from tierflow.context.ids import new_context_id
from tierflow.engine.sharded import GenerationOutcome, ShardedLM, Spans
from tierflow.node.deploy import deploy_local
from tierflow.runtime.lm import SamplingConfig

TOKENS = 64


async def generation(lm: ShardedLM, prompt: list[int], spans: Spans, tokens: int) -> GenerationOutcome:
    context = new_context_id()
    outcome = await finish(lm, context, prompt, 0, spans, SamplingConfig.greedy(tokens))
    await lm.drop(context)
    return outcome


async def rounds(n: int, shape: str, poll_ms: float | None) -> None:
    model = default_models(shape)[1]
    certs = Path(tempfile.mkdtemp()) / "pki"
    deployment = deploy_local(model.path, certs, None, threads=1, startup_timeout=600, lane_poll_ms=poll_ms)
    try:
        proto = onnx.load(str(model.path))
        async with device_entry(model.path, model.name, deployment, model=proto, lane_poll_ms=poll_ms) as lm:
            prompt = lm.tokenizer.encode(PROMPT)
            spans = placement_spans("split", lm.num_layers)
            await generation(lm, prompt, spans, TOKENS)  # warm-up: lanes opened, sessions loaded
            for _ in range(n):
                full = await generation(lm, prompt, spans, TOKENS)
                prompt_only = await generation(lm, prompt, spans, 1)

                def per_step(total: float, prefill: float) -> float:
                    return (total - prefill) / (TOKENS - 1) * 1e3

                compute = {
                    t.value: per_step(full.stats.compute_s[t.value], prompt_only.stats.compute_s[t.value])
                    for t in spans
                }
                hops = {
                    f"{a}->{b}": per_step(seconds, prompt_only.stats.hop_s.get((a, b), 0.0))
                    for (a, b), seconds in full.stats.hop_s.items()
                }
                token = 1e3 / full.tokens_per_s
                rest = token - sum(compute.values()) - sum(hops.values())
                print(
                    f"token {token:.2f} ms: compute "
                    + " + ".join(f"{tier} {ms:.2f}" for tier, ms in compute.items())
                    + ", hops "
                    + " + ".join(f"{hop} {ms:.2f}" for hop, ms in hops.items())
                    + f", rest {rest:.2f}",
                    flush=True,
                )
    finally:
        deployment.stop()


if __name__ == "__main__":
    asyncio.run(
        rounds(
            int(sys.argv[1]) if len(sys.argv) > 1 else 5,
            sys.argv[2] if len(sys.argv) > 2 else "8x512",
            float(sys.argv[3]) if len(sys.argv) > 3 else None,
        )
    )
