"""Decode lanes between real node processes (plain loopback: the tiers reach each other directly).

Generation over lanes gives exactly the unsplit model's tokens, the lanes are really used, and a
tier killed in the middle of a generation is failed over as on the data plane.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierflow.bench.entry import device_entry
from tierflow.context.ids import new_context_id
from tierflow.engine.sharded import GenerationEvent, GenerationOutcome
from tierflow.model.lm_layers import Span
from tierflow.model.registry import resolve_model
from tierflow.node.deploy import LocalDeployment, deploy_local
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.types import Tier

pytestmark = pytest.mark.slow
SPANS = {Tier.DEVICE: Span(0, 1), Tier.EDGE: Span(2, 3), Tier.CLOUD: Span(4, 5)}
PROMPT = "def "


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalDeployment]:
    deployed = deploy_local(resolve_model("demo-lm"), tmp_path / "pki", None, threads=1)
    yield deployed
    deployed.stop()


def unsplit(tokens: list[int], n: int) -> list[int]:
    lm = CausalLM.open(resolve_model("demo-lm"), SessionOptions(intra_op_threads=1))
    return lm.generate_ids(tokens, SamplingConfig.greedy(n)).new_ids


def test_greedy_over_lanes_is_the_unsplit_models_and_a_lost_tier_is_failed_over(
    deployment: LocalDeployment,
) -> None:
    async def go() -> None:
        async with device_entry(resolve_model("demo-lm"), "demo-lm", deployment) as lm:
            ids = lm.tokenizer.encode(PROMPT)
            expected = unsplit(ids, 40)
            assert lm.hop.lanes is not None
            config = SamplingConfig.greedy(40)
            n = len(ids)
            first = await collect(lm.generate(new_context_id(), ids, 0, SPANS, config, prompt_tokens=n))
            assert first.generated == expected
            # the first step went over the data plane and opened the lane; the next ones took it
            assert lm.hop.lanes.get(Tier.EDGE.value) is not None
            events: list[dict[str, str]] = []
            generated: list[int] = []
            context = new_context_id()
            async for item in lm.generate(context, ids, 0, SPANS, config, prompt_tokens=n):
                if isinstance(item, GenerationEvent) and item.token is not None:
                    generated.append(item.token)
                    if len(generated) == 4:  # mid-stream, steps on the lanes: the edge goes
                        deployment.nodes[Tier.EDGE].process.kill()
                elif isinstance(item, GenerationEvent) and item.event:
                    events.append(item.event)
            assert generated == expected
            assert any(e["event"] == "failover" and e["lost"] == "edge" for e in events), events
            assert lm.hop.lanes.get(Tier.EDGE.value) is None  # the broken lane was dropped

    asyncio.run(go())


async def collect(items: object) -> GenerationOutcome:
    outcome: GenerationOutcome | None = None
    async for item in items:  # type: ignore[attr-defined]
        if isinstance(item, GenerationOutcome):
            outcome = item
    assert outcome is not None
    return outcome
