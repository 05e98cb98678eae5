"""The entry point's router on real nodes (in-process data plane): SLA, network and battery choose.

Whatever the router picks, greedy text equals the unsplit model's: routing moves work, never changes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.engine.test_sharded import conversations, deployment, run, unsplit
from tests.engine.test_sharded import pki as pki  # noqa: F401  (the fixture)
from tests.engine.test_sharded import reference as reference  # noqa: F401  (the fixture)
from tests.support.packages import compile_bundled
from tierflow.engine.conversations import Conversations
from tierflow.engine.routing import TEXT_LONG_TOKENS, deepest
from tierflow.errors import InvalidInputError, TierUnavailableError
from tierflow.model.lm_layers import Span
from tierflow.model.package import Package
from tierflow.router.energy import BatteryState
from tierflow.router.sla import SLA, SLAFieldError, SLAUnmetError
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.transport.lane import Lanes
from tierflow.transport.tls import load_identity
from tierflow.types import Tier
from tierflow.types.tasks import TaskKind

PROMPT = "The for statement"


async def planned(pki: Path, tmp_path: Path) -> Conversations:
    """The entry point's conversations over a demo-lm deployment with no fixed spans, started."""
    _, dev = deployment(pki, tmp_path, spans=None)
    conv = conversations(dev)
    await conv.lm.start()
    return conv


def test_an_sla_request_is_routed_and_reports_every_alternative(
    pki: Path, tmp_path: Path, reference: CausalLM
) -> None:
    async def go() -> None:
        conv = await planned(pki, tmp_path)
        tokens, done = await run(conv, PROMPT, sla=SLA.parse({"max_latency": 60, "prefer": "latency"}))
        assert tokens == unsplit(reference, conv.lm.tokenizer.encode(PROMPT))
        route = done.route
        assert route is not None and not route.decision.degraded
        assert {a.offer.tier for a in route.decision.alternatives} == set(Tier)  # one offer per tier
        chosen = route.decision.alternatives[0]
        assert chosen.chosen and chosen.offer.tier is route.decision.tier
        # the fastest predicted of the offers meeting the SLA, and it ran where it was placed
        assert chosen.predicted_s == min(a.predicted_s for a in route.decision.alternatives if a.meets_sla)
        assert deepest(done.outcome.spans) is route.decision.tier
        assert done.outcome.spans == route.spans
        # the matrix learned the decode speed of that placement (seconds per token)
        cell = conv.router.matrix.cell(TaskKind.TEXT_SHORT, route.decision.tier)
        assert cell.count == 1 and cell.mean_s is not None and cell.mean_s > 0

    asyncio.run(go())


def test_a_low_battery_keeps_the_conversation_on_the_device_and_a_charged_one_moves_it_back(
    pki: Path, tmp_path: Path, reference: CausalLM
) -> None:
    async def go() -> None:
        conv = await planned(pki, tmp_path)
        tok = conv.lm.tokenizer
        low = BatteryState(level=12.0)
        _, first = await run(conv, PROMPT, SamplingConfig.greedy(8), battery=low)
        assert first.route is not None and first.route.decision.tier is Tier.DEVICE
        assert first.outcome.spans == {Tier.DEVICE: Span(0, conv.lm.num_layers - 1)}
        assert "battery 12 %" in first.route.decision.reason
        others = [a for a in first.route.decision.alternatives if a.offer.tier is not Tier.DEVICE]
        assert others and all(not a.feasible and "energy policy" in a.why for a in others)
        # charged again, the cloud is the fastest: the context follows, its KV rebuilt there, and the
        # conversation goes on exactly as the unsplit model continues it
        follow_ids = tok.encode(" while")
        _, second = await run(
            conv,
            follow_ids,
            SamplingConfig.greedy(8),
            context_id=first.record.context_id,
            battery=BatteryState(level=90.0, charging=True),
            sla=SLA.parse({"prefer": "latency"}),
        )
        assert second.route is not None
        history = [*tok.encode(PROMPT), *first.outcome.generated, *follow_ids]
        assert second.outcome.generated == unsplit(reference, history, SamplingConfig.greedy(8))
        if second.outcome.spans != first.outcome.spans:  # moved: said so, and nothing left behind
            assert any(e["event"] == "rerouted" for e in second.outcome.events)
            assert second.outcome.cached_tokens == 0
        assert conv.router.conditions.battery == BatteryState(level=90.0, charging=True)

    asyncio.run(go())


def test_the_entry_points_lanes_stop_polling_on_battery_and_poll_again_on_mains(
    pki: Path, tmp_path: Path, reference: CausalLM
) -> None:
    """Polling for a reply spends the device's CPU for a shorter hand-off: not on battery."""

    async def go() -> None:
        conv = await planned(pki, tmp_path)
        lanes = conv.lm.hop.lanes = Lanes(load_identity(pki, "device"), {}, poll_s=0.005)
        config = SamplingConfig.greedy(4)
        tokens, _ = await run(conv, PROMPT, config, battery=BatteryState(level=60.0))
        assert lanes.poll_s == 0.0
        assert tokens == unsplit(reference, conv.lm.tokenizer.encode(PROMPT), config)  # same text
        await run(conv, PROMPT, config, battery=BatteryState(level=60.0, charging=True))
        assert lanes.poll_s == 0.005

    asyncio.run(go())


def test_an_sla_nothing_meets_is_refused_naming_the_best_offer_or_degraded_when_offline_ok(
    pki: Path, tmp_path: Path
) -> None:
    async def go() -> None:
        conv = await planned(pki, tmp_path)
        impossible = {"max_latency": 1e-6}
        best = r"the best is (device|edge|cloud) full .* s predicted"
        with pytest.raises(SLAUnmetError, match=best) as info:
            await run(conv, PROMPT, sla=SLA.parse(impossible))
        assert info.value.best.predicted_s is not None and info.value.best.predicted_s > 1e-6
        assert await asyncio.to_thread(conv.store.list, "alice") == []  # refused before a context was made
        _, done = await run(conv, PROMPT, sla=SLA.parse({**impossible, "offline_ok": True}))
        assert done.route is not None and done.route.decision.degraded
        assert done.outcome.generated  # a degraded answer, labelled so, rather than none

    asyncio.run(go())


def test_without_network_only_the_device_serves_and_only_with_offline_ok_when_it_is_too_slow(
    pki: Path, tmp_path: Path
) -> None:
    async def go() -> None:
        net, dev = deployment(pki, tmp_path, spans=None)
        conv = conversations(dev)
        await conv.lm.start()
        net.kill("edge")
        net.kill("cloud")
        await conv.lm.mark_down(Tier.EDGE)
        await conv.lm.mark_down(Tier.CLOUD)
        _, done = await run(conv, PROMPT, SamplingConfig.greedy(4), sla=SLA.parse({"offline_ok": True}))
        assert done.route is not None and done.route.decision.tier is Tier.DEVICE
        reasons = {a.offer.tier: a.why for a in done.route.decision.alternatives}
        assert "no network" in reasons[Tier.CLOUD] and "no network" in reasons[Tier.EDGE]

    asyncio.run(go())


def test_a_long_generation_reads_its_own_row_and_bad_slas_name_the_field(pki: Path, tmp_path: Path) -> None:
    async def go() -> None:
        conv = await planned(pki, tmp_path)
        config = SamplingConfig.greedy(TEXT_LONG_TOKENS + 1)
        route = conv.router.route_text(
            conv.lm, SLA(), max_tokens=config.max_new_tokens, current=None, history=4, new_prompt=4
        )
        assert route.task is TaskKind.TEXT_LONG
        with pytest.raises(SLAFieldError, match="sla.max_latency"):
            SLA.parse({"max_latency": -1})
        with pytest.raises(SLAFieldError, match="sla.colour"):
            SLA.parse({"colour": "red"})

    asyncio.run(go())


def test_no_placement_at_all_is_a_clear_tier_error(pki: Path, tmp_path: Path) -> None:
    async def go() -> None:
        _, dev = deployment(pki, tmp_path, spans=None, device={"memory_mib": 1})
        conv = conversations(dev)
        await conv.lm.start()
        for tier in (Tier.EDGE, Tier.CLOUD):
            conv.lm.tiers[tier].available = False
        with pytest.raises(TierUnavailableError, match="no placement"):
            conv.router.route_text(conv.lm, SLA(), max_tokens=4, current=None, history=4, new_prompt=4)

    asyncio.run(go())


def test_a_pinned_request_runs_on_its_tier_and_an_offline_network_leaves_only_the_device(
    pki: Path, tmp_path: Path, reference: CausalLM
) -> None:
    async def go() -> None:
        conv = await planned(pki, tmp_path)
        expected = unsplit(reference, conv.lm.tokenizer.encode(PROMPT), SamplingConfig.greedy(6))
        tokens, pinned = await run(conv, PROMPT, SamplingConfig.greedy(6), pin=Tier.EDGE)
        assert tokens == expected
        assert pinned.route is not None and pinned.route.decision.tier is Tier.EDGE
        assert deepest(pinned.outcome.spans) is Tier.EDGE
        assert all("forced to the edge" in a.why for a in pinned.route.decision.alternatives[1:])
        # the phone loses its network: the layers are planned on the device alone, and a request says so
        await conv.report_device(network="offline")
        assert conv.router.conditions.network == "offline" and not conv.lm.network_up
        offline_ok = SLA.parse({"offline_ok": True})
        tokens, offline = await run(conv, PROMPT, SamplingConfig.greedy(6), sla=offline_ok)
        assert tokens == expected
        assert offline.route is not None and offline.route.decision.tier is Tier.DEVICE
        assert offline.outcome.spans == {Tier.DEVICE: Span(0, conv.lm.num_layers - 1)}
        why = {a.offer.tier: a.why for a in offline.route.decision.alternatives}
        assert "no network" in why[Tier.CLOUD] and "no network" in why[Tier.EDGE]
        with pytest.raises(InvalidInputError, match="network"):
            await conv.report_device(network="carrier-pigeon")

    asyncio.run(go())


@pytest.fixture(scope="module")
def lm_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bundled("demo-lm", tmp_path_factory.mktemp("lm") / "demo-lm.tfm")


def test_offline_with_no_room_for_the_full_model_the_phones_early_exit_model_answers_degraded(
    pki: Path, tmp_path: Path, reference: CausalLM, lm_package: Path
) -> None:
    async def go() -> None:
        device = {"memory_mib": 1, "lite_model": str(lm_package)}
        _, dev = deployment(pki, tmp_path, spans=None, device=device)
        conv = conversations(dev)
        await conv.lm.start()
        tok = conv.lm.tokenizer
        phone = CausalLM.open(Package.open(lm_package).artifact("phone"), SessionOptions(intra_op_threads=1))
        await conv.report_device(network="offline")
        config = SamplingConfig.greedy(8)
        with pytest.raises(SLAUnmetError, match="device early_exit"):  # the full model is out of reach
            await run(conv, PROMPT, config, sla=SLA())
        tokens, done = await run(conv, PROMPT, config, sla=SLA.parse({"offline_ok": True}))
        assert done.route is not None and done.route.early_exit and done.route.decision.degraded
        assert tokens == phone.generate_ids(tok.encode(PROMPT), config).new_ids  # the phone's own model
        assert done.outcome.events[0]["event"] == "early_exit"
        # the network is back: the next turn runs the full model over the whole conversation
        await conv.report_device(network="wifi")
        history = [*tok.encode(PROMPT), *tokens]
        follow, again = await run(conv, tok.encode(" while"), config, context_id=done.record.context_id)
        assert again.route is None and Tier.DEVICE not in again.outcome.spans
        assert follow == unsplit(reference, [*history, *tok.encode(" while")], config)
        # an SLA that accepts the early-exit model sees it among the offers, with its prediction
        routed = conv.router.route_text(
            conv.lm, SLA.parse({"min_quality": "early_exit"}), max_tokens=8, current=None, history=4,
            new_prompt=4, early_exit=conv.early_exit,
        )
        lite = [a for a in routed.decision.alternatives if a.offer.quality == "early_exit"]
        assert lite and lite[0].feasible and lite[0].meets_sla and lite[0].predicted_s is not None

    asyncio.run(go())


def test_an_access_network_report_keeps_the_backhaul_and_a_repeated_one_keeps_the_measured_rtt(
    pki: Path, tmp_path: Path
) -> None:
    async def go() -> None:
        links = {"device-edge": "wifi", "device-cloud": "wifi+backhaul", "edge-cloud": "backhaul"}
        _, dev = deployment(pki, tmp_path, spans=None, device={"links": links})
        conv = conversations(dev)
        await conv.lm.start()
        cloud = frozenset((Tier.DEVICE, Tier.CLOUD))
        assert conv.lm.link_profiles[cloud].name == "wifi+backhaul"
        await conv.report_device(network="offline")
        await conv.report_device(network="4g")  # back from an offline spell: the backhaul is still there
        assert conv.lm.link_profiles[cloud].name == "4g+backhaul"
        conv.lm.link_rtt[cloud] = 0.123  # as a probe measured it
        await conv.report_device(network="4g")  # the same network again: nothing to forget
        assert conv.lm.link_rtt[cloud] == 0.123

    asyncio.run(go())
