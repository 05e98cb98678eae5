"""``tierflow bench migrate``: moving a context's KV shard between tiers against its link bound.

For each access profile, edge and cloud are real node processes behind the SIMULATED links of
:func:`tierflow.node.deploy.deploy_local`; the benchmark process is the device (the entry point).
A context of ``context_tokens`` tokens is prefilled under ``device=0-1,edge=2-3,cloud=4-5``
(demo-lm), then layers 0-1 move device -> edge (the KV crosses the uplink) and back edge -> device
(the downlink). Each move is timed end to end (export, sealed frames, import) and set against its
bound, ``bytes / link bandwidth + RTT``, as ``time_over_bound``. After the moves the context
decodes on and its tokens are compared with the unsplit model's (``exact``).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tierflow.bench.entry import device_entry, finish
from tierflow.context.ids import new_context_id
from tierflow.engine.sharded import parse_spans
from tierflow.errors import ConfigError
from tierflow.model.lm_layers import Span
from tierflow.model.registry import resolve_model
from tierflow.node.deploy import LocalDeployment, deploy_local
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.transport.loop import run
from tierflow.types.links import LinkProfile, get_profile, transfer_s
from tierflow.types.tiers import Tier

SPANS = "device=0-1,edge=2-3,cloud=4-5"
MOVED = Span(0, 1)
CONTINUE = 16  # tokens decoded after the moves, checked against the unsplit model


async def _one_profile(
    model: Path,
    deployment: LocalDeployment,
    access: LinkProfile,
    context_tokens: int,
    repeats: int,
    expected: list[int],
) -> dict[str, Any]:
    up_s: list[float] = []
    down_s: list[float] = []
    moved_bytes = 0
    exact = True
    async with device_entry(model, "demo-lm", deployment) as lm:
        prompt = [int(i) for i in expected[:context_tokens]]
        for _ in range(repeats):
            context = new_context_id()
            spans = parse_spans(SPANS, lm.num_layers)
            first = await finish(lm, context, prompt, 0, spans, SamplingConfig.greedy(1))
            spans, there = await lm.migrate(context, spans, MOVED, Tier.EDGE)
            spans, back = await lm.migrate(context, spans, MOVED, Tier.DEVICE)
            up_s.append(float(there["seconds"]))  # type: ignore[arg-type]
            down_s.append(float(back["seconds"]))  # type: ignore[arg-type]
            moved_bytes = int(there["bytes"])  # type: ignore[call-overload]
            rest = await finish(
                lm, context, first.tokens, first.kv_len, spans, SamplingConfig.greedy(CONTINUE)
            )
            exact &= rest.tokens == expected[: len(rest.tokens)]
            await lm.drop(context)
    up_bound = transfer_s(moved_bytes, access.up_bps) + access.rtt_s
    down_bound = transfer_s(moved_bytes, access.down_bps) + access.rtt_s
    up, down = statistics.median(up_s), statistics.median(down_s)
    return {
        "kv_bytes": moved_bytes,
        "up_s": round(up, 4),
        "up_bound_s": round(up_bound, 4),
        "down_s": round(down, 4),
        "down_bound_s": round(down_bound, 4),
        "time_over_bound": round(max(up / up_bound, down / down_bound), 3),
        "exact": exact,
    }


def run_migrate_bench(
    profiles: Sequence[str],
    *,
    context_tokens: int = 192,
    repeats: int = 3,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every access profile in ``profiles``; see the module docstring."""
    stage = on_stage or (lambda _msg: None)
    model = resolve_model("demo-lm")
    reference = CausalLM.open(model, SessionOptions(intra_op_threads=1))
    limit = reference.max_seq_len or 0
    if limit and context_tokens + CONTINUE + 8 > limit:
        raise ConfigError(
            f"--context-tokens must leave room in demo-lm's {limit} tokens: at most {limit - CONTINUE - 8}"
        )
    seed = reference.require_tokenizer().encode("def ")
    # the unsplit model's own greedy text is the context: prompt + continuation, known in full
    expected = seed + reference.generate_ids(seed, SamplingConfig.greedy(context_tokens + CONTINUE)).new_ids
    result: dict[str, Any] = {
        "model": "demo-lm",
        "layers": str(MOVED),
        "context_tokens": context_tokens,
        "profiles": {},
    }
    with tempfile.TemporaryDirectory(prefix="tierflow-bench-migrate-") as tmp:
        for name in profiles:
            access = get_profile(name)
            stage(f"{name}: starting edge and cloud nodes")
            deployment = deploy_local(model, Path(tmp) / "pki", access, threads=1)
            try:
                stage(f"{name}: moving layers {MOVED} device -> edge -> device")
                result["profiles"][name] = run(
                    _one_profile(model, deployment, access, context_tokens, repeats, expected)
                )
            finally:
                deployment.stop()
    return result
