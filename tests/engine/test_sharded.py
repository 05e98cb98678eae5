"""Layer-sharded generation through real nodes (in-process data plane: tests/support/fake_peers.py).

The bar is vLLM's for its KV connectors: greedy output through the split, through a follow-up,
a migration, an eviction or a failover equals greedy output of the unsplit model.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_peers import FakeNetwork
from tierflow.engine.conversations import Conversations, Finished
from tierflow.engine.sharded import PROBE_EVERY_S, StepStats
from tierflow.errors import ContextNotFoundError, InvalidInputError
from tierflow.model.lm_layers import Span
from tierflow.model.registry import resolve_model
from tierflow.node.server import NodeServer
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.transport.certs import init_pki
from tierflow.types import Tier

SPANS = "device=0-1,edge=2-4,cloud=5-5"
GREEDY = SamplingConfig.greedy(24)


@pytest.fixture(scope="module")
def reference() -> CausalLM:
    return CausalLM.open(resolve_model("demo-lm"), SessionOptions(intra_op_threads=1))


def unsplit(lm: CausalLM, ids: list[int], config: SamplingConfig = GREEDY) -> list[int]:
    return lm.generate_ids(ids, config).new_ids


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_pki(tmp_path / "pki", ["device", "edge", "cloud"])
    return tmp_path / "pki"


def deployment(
    pki: Path,
    tmp_path: Path,
    model: Path | None = None,
    *,
    spans: str | None = SPANS,
    edge: dict[str, Any] | None = None,
    device: dict[str, Any] | None = None,
) -> tuple[FakeNetwork, NodeServer]:
    model = model or resolve_model("demo-lm")
    net = FakeNetwork(pki)
    net.node(Tier.CLOUD, model)
    net.node(Tier.EDGE, model, ["cloud"], **(edge or {}))
    dev = net.node(
        Tier.DEVICE,
        model,
        ["edge", "cloud"],
        store=str(tmp_path / "contexts.db"),
        spans=spans,
        **(device or {}),
    )
    return net, dev


def conversations(node: NodeServer) -> Conversations:
    assert node.api is not None
    return node.api.conversations


async def run(
    conv: Conversations,
    prompt: str | list[int],
    config: SamplingConfig = GREEDY,
    *,
    owner: str = "alice",
    **options: Any,
) -> tuple[list[int], Finished]:
    tokens: list[int] = []
    done: Finished | None = None
    async for item in conv.generate(owner, prompt, config, **options):
        if isinstance(item, Finished):
            done = item
        elif item.token is not None:
            tokens.append(item.token)
    assert done is not None
    return tokens, done


def test_greedy_through_three_tiers_and_a_follow_up_equal_the_unsplit_model(
    pki: Path, tmp_path: Path, reference: CausalLM
) -> None:
    async def go() -> None:
        net, dev = deployment(pki, tmp_path)
        conv = conversations(dev)
        await conv.lm.start()
        tok = conv.lm.tokenizer
        first, done = await run(conv, "The for statement")
        assert first == unsplit(reference, tok.encode("The for statement"))
        assert done.outcome.spans == {
            Tier.DEVICE: conv.lm.spans[Tier.DEVICE],
            Tier.EDGE: conv.lm.spans[Tier.EDGE],
            Tier.CLOUD: conv.lm.spans[Tier.CLOUD],
        }
        assert set(done.outcome.stats.compute_s) == {"device", "edge", "cloud"}
        # every tier holds the KV of its own layers for the context, nothing more
        shards = await conv.lm.shards(done.record.context_id)
        assert {t: s["layers"] for t, s in shards.items()} == {"device": "0-1", "edge": "2-4", "cloud": "5-5"}
        follow, again = await run(conv, " The while statement", context_id=done.record.context_id)
        history = tok.encode("The for statement") + first + tok.encode(" The while statement")
        assert follow == unsplit(reference, history)
        # the follow-up fed only what was new: the history but its last token was in the tiers' KV
        assert again.outcome.cached_tokens == len(tok.encode("The for statement")) + len(first) - 1
        assert again.record.tokens == history + follow
        # only token ids and hidden states crossed: every step went device -> edge -> cloud
        assert {(a, b) for a, b, op in net.calls if op == "lm_step"} == {
            ("device", "edge"),
            ("edge", "cloud"),
        }

    asyncio.run(go())


def test_32_concurrent_conversations_do_not_mix(pki: Path, tmp_path: Path, reference: CausalLM) -> None:
    prompts = [f"{word} {n}" for n, word in enumerate(["The", "class", "import", "def"] * 8)]
    config = SamplingConfig.greedy(6)

    async def go() -> list[list[int]]:
        _, dev = deployment(pki, tmp_path)
        conv = conversations(dev)
        await conv.lm.start()
        results = await asyncio.gather(
            *(run(conv, p, config, owner=f"user{i % 4}") for i, p in enumerate(prompts))
        )
        assert len({d.record.context_id for _, d in results}) == len(prompts)
        return [tokens for tokens, _ in results]

    outputs = asyncio.run(go())
    tok = reference.require_tokenizer()
    assert outputs == [unsplit(reference, tok.encode(p), config) for p in prompts]


def test_a_tier_that_evicted_the_kv_rebuilds_it_from_the_history(
    pki: Path, tmp_path: Path, reference: CausalLM
) -> None:
    async def go() -> None:
        _, dev = deployment(pki, tmp_path, edge={"kv_mib": 0.001})  # the edge keeps almost nothing
        conv = conversations(dev)
        await conv.lm.start()
        tok = conv.lm.tokenizer
        first, done = await run(conv, "The for statement", SamplingConfig.greedy(4))
        other, _ = await run(conv, "import os", SamplingConfig.greedy(4))  # evicts the first context's shard
        follow, again = await run(conv, " The", SamplingConfig.greedy(8), context_id=done.record.context_id)
        history = tok.encode("The for statement") + first + tok.encode(" The")
        assert follow == unsplit(reference, history, SamplingConfig.greedy(8))
        assert any(e["event"] == "kv_rebuilt" and e["tier"] == "edge" for e in again.outcome.events)
        assert other == unsplit(reference, tok.encode("import os"), SamplingConfig.greedy(4))

    asyncio.run(go())


def test_the_cloud_lost_mid_generation_the_rest_finish_it_with_the_same_tokens(
    pki: Path, tmp_path: Path, reference: CausalLM
) -> None:
    async def go() -> None:
        net, dev = deployment(pki, tmp_path)
        conv = conversations(dev)
        await conv.lm.start()
        items = conv.generate("alice", "The for statement", GREEDY)
        tokens: list[int] = []
        async for item in items:  # a few tokens through all three tiers, then the cloud dies
            if not isinstance(item, Finished) and item.token is not None:
                tokens.append(item.token)
                if len(tokens) == 5:
                    break
        door = net.hold("cloud")
        step = asyncio.ensure_future(anext(items))
        await door.waiting.wait()  # the next step is at the cloud's door
        net.kill("cloud")
        events = []
        item = await step
        while not isinstance(item, Finished):
            if item.token is not None:
                tokens.append(item.token)
            elif item.event is not None:
                events.append(item.event)
            item = await anext(items)
        assert tokens == unsplit(reference, conv.lm.tokenizer.encode("The for statement"))
        assert events and events[0]["event"] == "failover" and events[0]["lost"] == "cloud"
        assert Tier.CLOUD not in item.outcome.spans
        assert item.record.spans == {t.value: str(s) for t, s in item.outcome.spans.items()}
        # the cloud comes back: once the entry point asks again, the next conversation uses it
        net.revive("cloud")
        now = conv.lm.clock()
        conv.lm.clock = lambda: now + PROBE_EVERY_S
        again, done = await run(conv, "The for statement")
        assert again == tokens
        assert done.outcome.spans[Tier.CLOUD] == Span(5, 5)

    asyncio.run(go())


def test_migrating_layers_keeps_generation_exact(pki: Path, tmp_path: Path, reference: CausalLM) -> None:
    async def go() -> None:
        _, dev = deployment(pki, tmp_path)
        conv = conversations(dev)
        await conv.lm.start()
        tok = conv.lm.tokenizer
        first, done = await run(conv, "The for statement")
        ctx = done.record.context_id
        record, moved = await conv.migrate(ctx, "alice", "2-4", "cloud")  # edge -> cloud
        assert record.spans == {"device": "0-1", "cloud": "2-5"}
        assert moved["bytes"] == 3 * 2 * 6 * 32 * (len(tok.encode("The for statement")) + len(first) - 1) * 4
        record, _ = await conv.migrate(ctx, "alice", "0-1", "edge")  # device -> edge: the device holds none
        assert record.spans == {"edge": "0-1", "cloud": "2-5"}
        shards = await conv.lm.shards(ctx)
        assert {t: s["layers"] for t, s in shards.items()} == {"edge": "0-1", "cloud": "2-5"}
        follow, again = await run(conv, " The", context_id=ctx)
        history = tok.encode("The for statement") + first + tok.encode(" The")
        assert follow == unsplit(reference, history)
        assert again.outcome.cached_tokens == len(history) - len(tok.encode(" The")) - 1  # nothing rebuilt
        with pytest.raises(InvalidInputError, match="split"):
            await conv.migrate(ctx, "alice", "3", "edge")  # cloud would hold 2 and 4-5

    asyncio.run(go())


def test_deleting_a_context_erases_it_on_every_tier_and_in_the_store(pki: Path, tmp_path: Path) -> None:
    async def go() -> None:
        net, dev = deployment(pki, tmp_path)
        conv = conversations(dev)
        await conv.lm.start()
        _, done = await run(conv, "The for statement", SamplingConfig.greedy(4))
        ctx = done.record.context_id
        held = {
            t: n.lm_hop.kv.get(ctx, *n.lm_hop.kv.spans(ctx)[0])
            for t, n in net.nodes.items()
            if n.lm_hop is not None and n.lm_hop.kv.spans(ctx)
        }
        arrays = [a for shard in held.values() if shard is not None for a in (*shard.keys, *shard.values)]
        assert len(held) == 3 and arrays
        erased = await conv.delete(ctx, "alice")
        assert erased == sum(int(a.nbytes) for a in arrays)
        assert all(not a.any() for a in arrays)  # overwritten, not just forgotten
        assert all(not n.lm_hop.kv.spans(ctx) for n in net.nodes.values() if n.lm_hop is not None)
        with pytest.raises(ContextNotFoundError):
            await conv.get(ctx, "alice")
        assert ctx.encode() not in (tmp_path / "contexts.db").read_bytes()

    asyncio.run(go())


@pytest.mark.export
# 8 layers: torch.onnx's Llama graph reads the past length of layer 3 (and 7) for every layer's mask,
# so spans that start after layer 3 must take that length from their own past
@pytest.mark.parametrize(
    ("kind", "layers", "spans"),
    [("gpt2", 3, "device=0-0,edge=1-1,cloud=2-2"), ("llama", 8, "device=0-2,edge=3-4,cloud=5-7")],
)
def test_exported_hf_models_split_three_ways_give_the_unsplit_tokens(
    kind: str, layers: int, spans: str, pki: Path, tmp_path: Path
) -> None:
    from tests.support.hf_models import exported

    model = exported(tmp_path, kind, layers=layers)
    lm = CausalLM.open(model, SessionOptions(intra_op_threads=1))

    async def go() -> list[int]:
        _, dev = deployment(pki, tmp_path, model, spans=spans)
        conv = conversations(dev)
        await conv.lm.start()
        tokens, _ = await run(conv, "Return the JSON object as", SamplingConfig.greedy(16))
        return tokens

    assert asyncio.run(go()) == unsplit(
        lm, lm.require_tokenizer().encode("Return the JSON object as"), SamplingConfig.greedy(16)
    )


def test_what_a_generation_s_hops_cost_beyond_the_ping_goes_into_the_plan(pki: Path, tmp_path: Path) -> None:
    async def go() -> None:
        _net, dev = deployment(pki, tmp_path)
        lm = conversations(dev).lm
        await lm.start()
        spans = dict(lm.spans)
        before = lm.predict(spans).token_s
        hops = [(Tier.DEVICE.value, Tier.EDGE.value), (Tier.EDGE.value, Tier.CLOUD.value)]
        lm.learn_hops(StepStats(hop_s={h: 0.010 * 20 for h in hops}, steps=20))  # 10 ms a hop
        learned = lm.predict(spans).token_s
        assert learned - before == pytest.approx(0.020, abs=0.002)  # each hop's step cost, not its ping
        lm.learn_hops(StepStats(hop_s={h: 0.0 for h in hops}, steps=20))  # cheaper now: it moves back
        assert before < lm.predict(spans).token_s < learned
        lm.learn_hops(StepStats(hop_s={h: 1.0 for h in hops}, steps=2))  # too few steps to learn from
        assert lm.predict(spans).token_s < learned

    asyncio.run(go())
