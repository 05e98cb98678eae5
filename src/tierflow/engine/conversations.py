"""Conversations that follow the user: a context's token history in a store, its KV on the tiers.

:class:`Conversations` joins a :class:`~tierflow.engine.sharded.ShardedLM` (the tiers) and a
:class:`~tierflow.context.store.ContextStore` (who owns which conversation, its tokens, its
expiry). The KV the tiers hold for a context always covers its history but the last token
(the last one sampled, not fed back yet): a follow-up feeds only what is new, a tier that lost
its shard rebuilds it from the history, and a new prompt that shares a prefix with an implicit
(OpenAI-style) conversation of the same identity reuses that prefix, as vLLM's automatic prefix
caching does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from tierflow.context.store import DEFAULT_EXPIRES_IN, ContextRecord, ContextStore, common_prefix_len
from tierflow.engine.early_exit import EarlyExitLM
from tierflow.engine.image_contexts import IMAGE_KIND, KIND_KEY
from tierflow.engine.routing import EntryRouter, TextRoute, deepest, text_task
from tierflow.engine.sharded import (
    GenerationEvent,
    GenerationOutcome,
    ShardedLM,
    Spans,
    StepStats,
    parse_spans,
    spans_text,
)
from tierflow.errors import ContextError, ContextExpiredError, InvalidInputError
from tierflow.model.lm_layers import Span
from tierflow.model.tokenizer import TextStream
from tierflow.router.energy import BatteryState
from tierflow.router.sla import SLA
from tierflow.runtime.lm import SamplingConfig
from tierflow.types.links import get_profile
from tierflow.types.tiers import Tier

IMPLICIT = "implicit"  # meta flag: a context the OpenAI routes made without the caller naming it
PURGE_EVERY_S = 30.0


@dataclass
class Finished:
    """The end of a generation, as the API reports it."""

    record: ContextRecord
    outcome: GenerationOutcome
    text: str
    route: TextRoute | None = None  # the router's decision, when the request was routed


class Conversations:
    """Generation with contexts (see the module docstring)."""

    def __init__(
        self,
        lm: ShardedLM,
        store: ContextStore,
        *,
        default_expires_in: float = DEFAULT_EXPIRES_IN,
        clock: object = time.time,
        router: EntryRouter | None = None,
        early_exit: EarlyExitLM | None = None,
    ) -> None:
        self.lm = lm
        self.early_exit = early_exit  # the phone's early-exit model on the device, if it keeps one
        self.router = router if router is not None else EntryRouter()
        self.on_finished: list[Callable[[Finished], None]] = []  # told of every finished generation
        self.on_network: list[Callable[[], None]] = []  # told when the device reports its access network
        self.store = store
        self.default_expires_in = default_expires_in
        self._locks: dict[str, asyncio.Lock] = {}
        self._purger: asyncio.Task[None] | None = None

    # --- contexts --------------------------------------------------------------------------------

    def spans_of(self, record: ContextRecord) -> Spans | None:
        return parse_spans(record.spans, self.lm.num_layers) if record.spans else None

    async def get(self, context_id: str, owner: str) -> ContextRecord:
        try:
            return await asyncio.to_thread(self.store.get, context_id, owner)
        except ContextExpiredError:
            await self.lm.drop(context_id)  # the store deleted it; the tiers' shards go too
            raise

    async def delete(self, context_id: str, owner: str) -> int:
        """Erase a context everywhere: its KV on every tier, then its record. Bytes of KV erased."""
        await self.get(context_id, owner)
        erased = await self.lm.drop(context_id)
        await asyncio.to_thread(self.store.delete, context_id)
        return erased

    async def purge(self) -> list[str]:
        ids = await asyncio.to_thread(self.store.purge_expired)
        for context_id in ids:
            await self.lm.drop(context_id)
        return ids

    def start_purging(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(PURGE_EVERY_S)
                await self.purge()

        self._purger = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()

    async def _implicit_match(self, owner: str, tokens: Sequence[int]) -> ContextRecord | None:
        """The owner's implicit conversation sharing the longest prefix with ``tokens`` (if any does)."""
        records = await asyncio.to_thread(self.store.list, owner)
        best, best_len = None, 0
        for record in records:
            if record.meta.get(IMPLICIT) != "1":
                continue
            n = common_prefix_len(record.tokens, tokens)
            if n > best_len:
                best, best_len = record, n
        return best

    # --- generation --------------------------------------------------------------------------------

    async def generate(
        self,
        owner: str,
        prompt: str | Sequence[int],
        config: SamplingConfig,
        *,
        context_id: str | None = None,
        expires_in: float | None = None,
        whole: bool = False,
        sla: SLA | None = None,
        battery: BatteryState | None = None,
        metered: bool | None = None,
        pin: Tier | None = None,
    ) -> AsyncIterator[GenerationEvent | Finished]:
        """Generate for ``owner``; yields events, then :class:`Finished`.

        ``whole``: ``prompt`` is the whole conversation (an OpenAI request), matched against the
        context's history; otherwise it is appended to the context's history.

        The request is routed (:class:`~tierflow.engine.routing.EntryRouter`) when it carries an
        ``sla``, the client reports its ``battery`` or a ``metered`` network, or the deployment
        knows the device's battery or a metered network; otherwise it runs on the context's
        placement or the plan in force, as the span planner chose. ``battery`` and ``metered`` are
        kept as the device's conditions for later requests. ``pin``: the request names the tier
        whose offer serves it (routed all the same, so the reply says what else there was).
        """
        if battery is not None or metered is not None:
            self.router.report(battery, metered)
        ids = list(prompt) if not isinstance(prompt, str) else self.lm.tokenizer.encode(prompt)
        if not ids:
            raise InvalidInputError("the prompt has no tokens")
        lifetime = self.default_expires_in if expires_in is None else expires_in
        created = False
        if context_id is not None:
            record = await self.get(context_id, owner)
            if record.meta.get(KIND_KEY) == IMAGE_KIND:
                raise InvalidInputError(f"context {context_id} holds a picture, not a conversation")
        elif whole and (found := await self._implicit_match(owner, ids)) is not None:
            record = found
        else:
            created = True
            record = await asyncio.to_thread(
                self.store.create,
                owner,
                self.lm.model_name,
                lifetime,
                meta={IMPLICIT: "1"} if whole else None,
            )
        lock = self._locks.setdefault(record.context_id, asyncio.Lock())
        async with lock:
            record = await asyncio.to_thread(self.store.get, record.context_id, owner)
            history = record.tokens
            if whole:
                keep = common_prefix_len(history, ids)
                tokens = list(ids)
            else:
                keep = len(history)
                tokens = [*history, *ids]
            kv_len = min(keep, max(len(history) - 1, 0))
            self.lm.check_length(len(tokens))
            current = self.spans_of(record)
            route: TextRoute | None = None
            conditions = self.router.conditions
            battery_now = self.router.battery_now()  # read once: this machine's own is a sensor read
            if sla is not None or pin is not None or battery_now is not None or conditions.metered:
                try:
                    route = self.router.route_text(
                        self.lm,
                        sla or SLA(),
                        max_tokens=config.max_new_tokens,
                        current=current,
                        history=len(tokens),
                        new_prompt=len(tokens) - kv_len,
                        pin=pin,
                        early_exit=self.early_exit,
                    )
                except Exception:
                    if created:  # refused before any work: the conversation it would have begun goes too
                        await asyncio.to_thread(self.store.delete, record.context_id)
                    raise
            if self.lm.hop.lanes is not None:
                self.lm.hop.lanes.set_polling(self.router.lane_polling(battery_now))
            outcome: GenerationOutcome | None = None
            if route is not None and route.early_exit:
                items = self._early_exit(tokens, config)
            else:
                items = self.lm.generate(
                    record.context_id,
                    tokens,
                    kv_len,
                    current,
                    config,
                    prompt_tokens=len(tokens),
                    placement=route.spans if route is not None else None,
                )
            async for item in items:
                if isinstance(item, GenerationOutcome):
                    outcome = item
                else:
                    yield item
            assert outcome is not None
            new_tokens = outcome.tokens[keep:]
            await asyncio.to_thread(self.store.append_tokens, record.context_id, new_tokens, keep=keep)
            lite = route is not None and route.early_exit
            if not lite:  # the early-exit model leaves the tiers' KV and the record's spans as they were
                await asyncio.to_thread(self.store.set_spans, record.context_id, spans_text(outcome.spans))
            record = await asyncio.to_thread(self.store.touch, record.context_id, lifetime)
            text = self.lm.tokenizer.decode(outcome.generated)
            if not lite:
                task, ran = text_task(config.max_new_tokens), deepest(outcome.spans)
                self.router.observe_text(task, ran, outcome.decode_s, len(outcome.generated))
            done = Finished(record, outcome, text, route)
            for hook in self.on_finished:
                hook(done)
            yield done

    async def _early_exit(
        self, tokens: list[int], config: SamplingConfig
    ) -> AsyncIterator[GenerationEvent | GenerationOutcome]:
        """The conversation's next tokens from the device's early-exit model (its whole history fed)."""
        assert self.early_exit is not None
        begun = time.perf_counter()
        first_at: float | None = None
        generated: list[int] = []
        text = TextStream(self.lm.tokenizer)
        budget = config.max_new_tokens
        if self.early_exit.max_seq_len is not None:
            budget = min(budget, self.early_exit.max_seq_len - len(tokens))
        limited = dataclasses.replace(config, max_new_tokens=max(budget, 1))
        eos = () if self.lm.eos is None else (self.lm.eos,)
        async for token in self.early_exit.stream(tokens, limited, stop_ids=eos):
            first_at = first_at or time.perf_counter()
            generated.append(token)
            yield GenerationEvent(token=token, text=text.add(generated))
            if token == self.lm.eos:
                break
        end = time.perf_counter()
        first_at = first_at or end
        layers = f"0-{self.early_exit.layers - 1} of {self.lm.num_layers} + exit head, INT8"
        yield GenerationOutcome(
            tokens=[*tokens, *generated],
            kv_len=0,
            generated=generated,
            spans={},  # no layer span held anything of it
            stats=StepStats(),
            prompt_tokens=len(tokens),
            cached_tokens=0,
            ttft_s=first_at - begun,
            decode_s=end - first_at,
            events=[{"event": "early_exit", "tier": Tier.DEVICE.value, "layers": layers}],
        )

    async def report_device(
        self, battery: BatteryState | None = None, metered: bool | None = None, network: str | None = None
    ) -> None:
        """What the client says of its device: battery, metered network, and its access network by
        profile name (``wifi``, ``4g``, ``offline``...), which the layers are planned on from now on."""
        self.router.report(battery, metered)
        if network is not None:
            profile = get_profile(network, InvalidInputError, "network")
            self.router.conditions.network = profile.name
            await self.lm.set_access(profile)
            for hook in self.on_network:
                hook()

    async def migrate(
        self, context_id: str, owner: str, layers: str, to: str
    ) -> tuple[ContextRecord, dict[str, object]]:
        """Move the KV of ``layers`` of a context to tier ``to``; later steps run those layers there."""
        try:
            target = Tier(to)
        except ValueError:
            raise InvalidInputError(f"unknown tier {to!r} (device, edge, cloud)") from None
        record = await self.get(context_id, owner)
        async with self._locks.setdefault(context_id, asyncio.Lock()):
            spans = self.spans_of(record)
            if not spans:
                raise ContextError(f"context {context_id} has no KV on any tier yet: nothing to move")
            new, moved = await self.lm.migrate(context_id, spans, Span.parse(layers), target)
            record = await asyncio.to_thread(self.store.set_spans, context_id, spans_text(new))
        return record, moved
