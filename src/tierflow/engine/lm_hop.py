"""One hop of layer-sharded generation, on any tier: its span of the LM, the KV of its layers per context.

Every node of a deployment holds the LM and runs whichever layer span a step names
(:class:`~tierflow.runtime.lm_span.SpanRunner`). A step travels along the holders in tier order,
each nested in the one before: the entry point (the device node) runs its span and calls the
next holder with the hidden state, which runs its own and calls the next, and the last one
samples the token, which comes back the same way. Only the step's token ids, the hidden state
and small headers cross a link, in sealed frames; each tier keeps the KV of its own layers per
context in a :class:`~tierflow.context.kv.KVShardStore` (bounded, least-recently-used contexts
evicted and rebuilt from the token history on demand, erased before release).

Operations on the data plane (``StageRequest.op``):

* ``lm_step``  -- inputs ``input_ids`` [1, seq] and, after layer 0, ``hidden`` [1, seq, d]; meta
  ``context``, ``span`` (this tier's layers, ``"a-b"``; empty: relay only), ``past_len`` (how many
  tokens of the context the KV must already hold: a longer shard is cut back to it, a shorter
  one is a :class:`~tierflow.errors.KVMissingError`), ``route`` (the holders after this one),
  ``sample`` (the sampling config, on the step whose token is wanted) and ``recent`` (the tokens
  the repetition penalty looks at). The reply carries ``token``, and per tier ``compute_s.<tier>``
  and ``elapsed_s.<tier>`` (compute plus waiting on the rest of the route).
* ``lm_drop``  -- meta ``context``, ``route``: every tier on the route erases the context's KV.
* ``lm_kv_export`` / ``lm_kv_import`` -- a shard's layers as tensors ``key.<i>`` / ``value.<i>``:
  migration (``lm_kv_move`` asks this tier to push layers to a peer or pull them from one).
* ``lm_info``  -- this tier's measured decode seconds per layer, memory budget, the KV it holds,
  and the RTT to its own peers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import onnx

from tierflow.context.kv import KVShard, KVShardStore
from tierflow.engine.tier_load import WorkMeter
from tierflow.errors import InvalidInputError, KVMissingError, TierUnavailableError
from tierflow.model.lm_layers import Span
from tierflow.runtime.lm import SamplingConfig, pick_token
from tierflow.runtime.lm_span import SpanRunner
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.slowdown import SimulatedSlowdown
from tierflow.transport.lane import Lanes
from tierflow.transport.messages import ORIGIN_KEY, MetaValue, StageRequest, StageResponse
from tierflow.transport.peers import Peers
from tierflow.transport.route import COMPUTE_PREFIX
from tierflow.types.quant import QuantMode

OP_LM_STEP = "lm_step"
OP_LM_DROP = "lm_drop"
OP_LM_KV_EXPORT = "lm_kv_export"
OP_LM_KV_IMPORT = "lm_kv_import"
OP_LM_KV_MOVE = "lm_kv_move"
OP_LM_INFO = "lm_info"
LM_OPS = frozenset({OP_LM_STEP, OP_LM_DROP, OP_LM_KV_EXPORT, OP_LM_KV_IMPORT, OP_LM_KV_MOVE, OP_LM_INFO})

ELAPSED_PREFIX = "elapsed_s."
# A decode step alone on this tier computes on the event loop: handing a few milliseconds of work to
# a worker thread and back costs two thread wake-ups per hop. Several steps at once (other contexts)
# or a prefill chunk go to worker threads, so that contexts compute in parallel and the loop stays free.
INLINE_MAX_TOKENS = 4
HIDDEN = "hidden"
IDS = "input_ids"


@dataclass(frozen=True)
class RouteHop:
    """A holder after this one: the tier and the layers it runs."""

    peer: str
    span: Span


def encode_hops(hops: Sequence[RouteHop]) -> str:
    return _encode_hops(tuple(hops))


@functools.lru_cache(maxsize=256)  # every step of a generation forwards the same rest of the route
def _encode_hops(hops: tuple[RouteHop, ...]) -> str:
    return json.dumps([{"peer": h.peer, "span": str(h.span)} for h in hops])


def decode_hops(raw: MetaValue | None) -> list[RouteHop]:
    if raw in (None, ""):
        return []
    return list(_decode_hops(str(raw)))


@functools.lru_cache(maxsize=256)  # every step of a generation carries the same route
def _decode_hops(raw: str) -> tuple[RouteHop, ...]:
    try:
        return tuple(RouteHop(str(h["peer"]), Span.parse(str(h["span"]))) for h in json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"malformed lm route: {exc}") from None


@functools.lru_cache(maxsize=256)  # frozen and hashable: a generation sends the same config each step
def encode_sampling(config: SamplingConfig) -> str:
    return json.dumps(
        {
            "temperature": config.temperature,
            "top_k": config.top_k,
            "top_p": config.top_p,
            "repeat_penalty": config.repeat_penalty,
            "repeat_last_n": config.repeat_last_n,
            "seed": config.seed,
        }
    )


def decode_sampling(raw: MetaValue | None) -> SamplingConfig | None:
    if raw in (None, ""):
        return None
    return _decode_sampling(str(raw))


@functools.lru_cache(maxsize=256)  # the config is frozen; a generation sends the same one each step
def _decode_sampling(raw: str) -> SamplingConfig:
    try:
        return SamplingConfig(**json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"malformed sampling config: {exc}") from None


_UNSEEDED = np.random.default_rng()  # seeded from the OS once: per-token entropy costs ~0.1 ms


def token_rng(seed: int | None, position: int) -> np.random.Generator:
    """The generator for the token at ``position``: with a seed, the same token whichever tier samples
    it and however often the context was rebuilt."""
    return _UNSEEDED if seed is None else np.random.default_rng([seed, position])


def needs_rng(config: SamplingConfig) -> bool:
    """Whether picking a token under ``config`` draws random numbers (greedy does not)."""
    return config.temperature > 0


def needs_recent(config: SamplingConfig) -> bool:
    """Whether picking a token under ``config`` reads the recent tokens (the repeat penalty does)."""
    return config.repeat_penalty != 1.0 and config.repeat_last_n > 0


def _meta_int(meta: dict[str, MetaValue], key: str) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError, TypeError):
        raise InvalidInputError(f"lm request needs an integer '{key}'") from None


def _context(meta: dict[str, MetaValue]) -> str:
    ctx = str(meta.get("context", ""))
    if not ctx:
        raise InvalidInputError("lm request names no context")
    return ctx


class _Step(NamedTuple):
    """An ``lm_step`` request, read and checked."""

    meta: dict[str, MetaValue]
    context: str
    past_len: int
    route: list[RouteHop]
    span: Span | None
    ids: np.ndarray
    hidden: np.ndarray | None
    origin: str | None  # None: this node's own work
    small: bool  # a decode step (a few tokens): computed inline, forwarded over a lane
    started: float


def _parse_step(request: StageRequest) -> _Step:
    started = time.perf_counter()
    meta = request.meta
    context = _context(meta)
    past_len = _meta_int(meta, "past_len")
    route = decode_hops(meta.get("route"))
    span = Span.parse(str(meta["span"])) if meta.get("span") else None
    ids = request.inputs.get(IDS)
    if ids is None or ids.ndim != 2 or ids.shape[0] != 1 or ids.dtype != np.int64:
        raise InvalidInputError("lm_step needs input_ids int64 [1, seq]")
    origin = str(meta[ORIGIN_KEY]) if ORIGIN_KEY in meta else None
    small = ids.shape[1] <= INLINE_MAX_TOKENS
    hidden = request.inputs.get(HIDDEN)
    return _Step(meta, context, past_len, route, span, ids, hidden, origin, small, started)


class LMHop:
    """One tier's share of sharded generation (see the module docstring)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        tier: str,
        peers: Peers | None,
        *,
        options: SessionOptions | None = None,
        slowdown: float = 1.0,
        kv_capacity_bytes: int = 256 * 2**20,
        memory_bytes: int | None = None,
        meter: WorkMeter | None = None,
        lanes: Lanes | None = None,
    ) -> None:
        self.tier = tier
        self.meter = meter if meter is not None else WorkMeter(tier)  # its compute, by origin
        self.peers = peers
        self.runner = SpanRunner(model, options)
        self.slowdown = slowdown
        self._slow = SimulatedSlowdown(slowdown)
        self.kv = KVShardStore(kv_capacity_bytes)
        self.memory_bytes = memory_bytes
        self._locks: dict[str, asyncio.Lock] = {}
        self._thread_locks: dict[str, threading.Lock] = {}  # per context, across the loop and lanes
        self.lanes = lanes
        self.loop: asyncio.AbstractEventLoop | None = None  # the node's loop, for lanes' data-plane calls
        self._layer_s: float | None = None
        self._in_flight = 0  # steps between entering and leaving step(), all contexts
        self._in_flight_lock = threading.Lock()

    # --- steps -------------------------------------------------------------------------------

    async def handle(self, request: StageRequest) -> StageResponse:
        if request.op == OP_LM_STEP:
            return await self.step(request)
        if request.op == OP_LM_DROP:
            return await self.drop(request)
        if request.op == OP_LM_KV_EXPORT:
            return self.export(request)
        if request.op == OP_LM_KV_IMPORT:
            return self.import_(request)
        if request.op == OP_LM_KV_MOVE:
            return await self.move(request)
        if request.meta.get("context"):
            return StageResponse(request.request_id, meta=self.holding(str(request.meta["context"])))
        return StageResponse(request.request_id, meta=await self.info())

    def holding(self, context: str) -> dict[str, MetaValue]:
        """What this tier holds of one context's KV (empty if nothing)."""
        stats = self.kv.stats().get(context)
        if stats is None:
            return {}
        return {"layers": stats.layers, "tokens": stats.tokens, "bytes": stats.bytes}

    async def step(self, request: StageRequest) -> StageResponse:
        self._count(1)
        try:
            return await self._step(request)
        finally:
            self._count(-1)
            # runs once the data plane has written this reply: the erasure is off the token's path
            asyncio.get_running_loop().call_soon(self.kv.erase_superseded)

    async def _step(self, request: StageRequest) -> StageResponse:
        step = _parse_step(request)
        out_meta: dict[str, MetaValue] = {}
        hidden, logits = step.hidden, None
        if step.span is not None:
            async with self._locks.setdefault(step.context, asyncio.Lock()):
                with self.meter.busy(step.origin):
                    if self._in_flight == 1 and step.small:
                        hidden, logits, seconds = self._compute_step(step)
                    else:
                        hidden, logits, seconds = await asyncio.to_thread(self._compute_step, step)
            out_meta[f"{COMPUTE_PREFIX}{self.tier}"] = seconds
        if step.route:
            peer, forwarded = self._forwarded(step, hidden, request)
            out_meta.update((await self._forward(peer, forwarded, step.small)).meta)
        else:
            self._sample(step, logits, out_meta)
        out_meta[f"{ELAPSED_PREFIX}{self.tier}"] = time.perf_counter() - step.started
        return StageResponse(request.request_id, meta=out_meta)

    def step_blocking(self, request: StageRequest) -> StageResponse:
        """:meth:`step` on a decode lane's thread (transport/lane.py): compute and forward right here."""
        if request.op != OP_LM_STEP:
            raise InvalidInputError(f"a decode lane carries {OP_LM_STEP} only, not {request.op!r}")
        self._count(1)
        try:
            step = _parse_step(request)
            out_meta: dict[str, MetaValue] = {}
            hidden, logits = step.hidden, None
            if step.span is not None:
                with self.meter.busy(step.origin):
                    hidden, logits, seconds = self._compute_step(step)
                out_meta[f"{COMPUTE_PREFIX}{self.tier}"] = seconds
            if step.route:
                peer, forwarded = self._forwarded(step, hidden, request)
                out_meta.update(self._forward_blocking(peer, forwarded).meta)
            else:
                self._sample(step, logits, out_meta)
            out_meta[f"{ELAPSED_PREFIX}{self.tier}"] = time.perf_counter() - step.started
            return StageResponse(request.request_id, meta=out_meta)
        finally:
            self._count(-1)

    def _count(self, delta: int) -> None:
        with self._in_flight_lock:  # lanes' threads count their steps too
            self._in_flight += delta

    def _compute_step(self, step: _Step) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        assert step.span is not None
        # one step of a context at a time, whichever way it came: a step a lane gave up on may still
        # be computing when the same step arrives again over the data plane
        with self._thread_locks.setdefault(step.context, threading.Lock()):
            return self._compute(step.context, step.span, step.past_len, step.ids, step.hidden)

    def _forwarded(
        self, step: _Step, hidden: np.ndarray | None, request: StageRequest
    ) -> tuple[str, StageRequest]:
        """The request for the next holder on the route: this tier's output, the rest of the route."""
        hop, rest = step.route[0], step.route[1:]
        inputs = {IDS: step.ids} if hidden is None else {IDS: step.ids, HIDDEN: hidden}
        meta = {k: v for k, v in step.meta.items() if k not in ("span", "route")}
        meta["span"], meta["route"] = str(hop.span), encode_hops(rest)
        forwarded = StageRequest(
            OP_LM_STEP, inputs=inputs, meta=meta, quant=request.quant, response_quant=request.response_quant
        )
        return hop.peer, forwarded

    async def _forward(self, peer: str, request: StageRequest, small: bool) -> StageResponse:
        """``request`` to ``peer``: over its decode lane when one is open and free (a step of a few
        tokens), else over the data plane (and then a lane is opened for the next steps)."""
        if self.peers is None:
            raise InvalidInputError(f"tier {self.tier} has no peers to forward to")
        raw = request.quant == QuantMode.RAW and request.response_quant in (None, QuantMode.RAW)
        lanes = self.lanes if small and raw else None  # lanes carry tensors raw: quantized frames do not
        if lanes is not None:
            lane = lanes.get(peer)
            if lane is not None:
                # a lone decode step calls right here: a worker thread's two wake-ups cost what the lane saves
                if self._in_flight == 1:
                    reply = lanes.call(peer, lane, request)
                else:
                    reply = await asyncio.to_thread(lanes.call, peer, lane, request)
                if reply is not None:
                    return reply
        reply = await self.peers.call(peer, request)
        if lanes is not None:
            lanes.open_soon(peer, self.peers)
        return reply

    def _forward_blocking(self, peer: str, request: StageRequest) -> StageResponse:
        lane = self.lanes.get(peer) if self.lanes is not None else None
        if lane is not None:
            assert self.lanes is not None
            reply = self.lanes.call(peer, lane, request)
            if reply is not None:
                return reply
        if self.loop is None:
            raise TierUnavailableError(f"tier {self.tier} cannot reach '{peer}' from a lane", tier=peer)
        # no lane to the next tier (yet), or it is busy: the data plane, on the node's event loop
        return asyncio.run_coroutine_threadsafe(self._forward(peer, request, True), self.loop).result()

    def _sample(self, step: _Step, logits: np.ndarray | None, out_meta: dict[str, MetaValue]) -> None:
        if logits is None:
            raise InvalidInputError(
                "the last holder of a step must compute the head (span up to the last layer)"
            )
        config = decode_sampling(step.meta.get("sample"))
        if config is not None:
            recent = json.loads(str(step.meta.get("recent", "[]"))) if needs_recent(config) else []
            position = step.past_len + int(step.ids.shape[1])
            rng = token_rng(config.seed, position) if needs_rng(config) else _UNSEEDED
            out_meta["token"] = pick_token(logits[0, -1], config, rng, recent)

    def _compute(
        self, context: str, span: Span, past_len: int, ids: np.ndarray, hidden: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        with self.kv.using(context):
            return self._compute_pinned(context, span, past_len, ids, hidden)

    def _compute_pinned(
        self, context: str, span: Span, past_len: int, ids: np.ndarray, hidden: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None, float]:
        shard = self._shard(context, span)
        have = shard.length if shard is not None else 0
        if have < past_len:
            raise KVMissingError(
                f"tier {self.tier} holds {have} tokens of the context's KV for layers {span}; "
                f"the step needs {past_len}",
                tier=self.tier,
            )
        if shard is not None and have > past_len:
            self.kv.truncate(context, past_len)
            shard = self._shard(context, span)
        past = (
            list(zip(shard.keys, shard.values, strict=True))
            if shard is not None and past_len
            else self.runner.empty_kv(span)
        )
        started = time.perf_counter()
        out = self.runner.step(span, ids, past, hidden)
        seconds = self._slow.stretch((span.first, span.last, ids.shape[-1]), started)
        self.kv.put(
            KVShard(
                context, (span.first, span.last), [k for k, _ in out.present], [v for _, v in out.present]
            ),
            defer_erase=True,  # the replaced past is erased once the reply is on its way (step())
            fresh=True,  # ONNX Runtime's outputs: new buffers, nothing else holds them
        )
        return out.hidden, out.logits, seconds

    def _shard(self, context: str, span: Span) -> KVShard | None:
        """The context's shard for exactly ``span``; a shard of other layers (an older plan) is erased."""
        shard = self.kv.get(context, span.first, span.last)
        if shard is None:
            for first, last in self.kv.spans(context):
                self.kv.discard(context, first, last)
        return shard

    async def drop(self, request: StageRequest) -> StageResponse:
        context = _context(request.meta)
        erased = self.kv.drop(context)
        self._locks.pop(context, None)
        self._thread_locks.pop(context, None)
        meta: dict[str, MetaValue] = {f"erased.{self.tier}": erased}
        route = [h.strip() for h in str(request.meta.get("route", "")).split(",") if h.strip()]
        if route and self.peers is not None:
            reply = await self.peers.call(
                route[0], StageRequest(OP_LM_DROP, meta={"context": context, "route": ",".join(route[1:])})
            )
            meta.update(reply.meta)
        return StageResponse(request.request_id, meta=meta)

    # --- migration ---------------------------------------------------------------------------

    def export(self, request: StageRequest) -> StageResponse:
        """The KV of ``layers`` of a context (``remove``: this tier no longer holds them afterwards)."""
        context = _context(request.meta)
        layers = Span.parse(str(request.meta.get("layers", "")))
        shard = self._holding(context)
        if shard is None or not (shard.layers[0] <= layers.first and layers.last <= shard.layers[1]):
            raise KVMissingError(
                f"tier {self.tier} holds no KV of layers {layers} for this context", tier=self.tier
            )
        outputs: dict[str, np.ndarray] = {}
        for layer in layers.layers:
            j = layer - shard.layers[0]
            # copies: the shard's own arrays are erased below when they leave, before the reply is sent
            outputs[f"key.{layer}"] = shard.keys[j].copy()
            outputs[f"value.{layer}"] = shard.values[j].copy()
        if request.meta.get("remove"):
            self._keep(
                shard, [i for i in range(shard.layers[0], shard.layers[1] + 1) if i not in layers.layers]
            )
        return StageResponse(request.request_id, outputs=outputs, meta={"length": shard.length})

    def import_(self, request: StageRequest) -> StageResponse:
        """Add layers to this tier's shard of a context; the result must stay one contiguous span."""
        context = _context(request.meta)
        layers = Span.parse(str(request.meta.get("layers", "")))
        keys = [request.inputs.get(f"key.{i}") for i in layers.layers]
        values = [request.inputs.get(f"value.{i}") for i in layers.layers]
        if any(a is None for a in [*keys, *values]):
            raise InvalidInputError(f"lm_kv_import needs key.<i> and value.<i> for layers {layers}")
        incoming = KVShard(
            context,
            (layers.first, layers.last),
            [k for k in keys if k is not None],
            [v for v in values if v is not None],
        )
        shard = self._holding(context)
        if shard is not None:
            if shard.length != incoming.length:
                raise InvalidInputError(
                    f"imported KV holds {incoming.length} tokens, this tier's {shard.length}"
                )
            first, last = shard.layers
            if layers.last + 1 == first:
                incoming = KVShard(
                    context,
                    (layers.first, last),
                    [*incoming.keys, *shard.keys],
                    [*incoming.values, *shard.values],
                )
            elif last + 1 == layers.first:
                incoming = KVShard(
                    context,
                    (first, layers.last),
                    [*shard.keys, *incoming.keys],
                    [*shard.values, *incoming.values],
                )
            else:
                raise InvalidInputError(f"layers {layers} do not border this tier's layers {shard.span}")
        stored = self.kv.put(incoming)  # replaces the old shard; its arrays live on in the merged one
        return StageResponse(request.request_id, meta={"span": stored.span, "bytes": stored.nbytes})

    async def move(self, request: StageRequest) -> StageResponse:
        """Push layers of a context to ``to`` (a peer of this tier) or pull them from ``from``."""
        meta = request.meta
        if self.peers is None:
            raise InvalidInputError(f"tier {self.tier} has no peers")
        started = time.perf_counter()
        if meta.get("to"):
            export = self.export(StageRequest(OP_LM_KV_EXPORT, meta={**meta, "remove": True}))
            reply = await self.peers.call(
                str(meta["to"]),
                StageRequest(
                    OP_LM_KV_IMPORT,
                    inputs=export.outputs,
                    meta={"context": meta["context"], "layers": meta["layers"]},
                    quant=request.quant,
                ),
            )
        else:
            pulled = await self.peers.call(
                str(meta["from"]),
                StageRequest(
                    OP_LM_KV_EXPORT,
                    meta={"context": meta["context"], "layers": meta["layers"], "remove": True},
                    response_quant=request.quant,
                ),
            )
            reply = self.import_(
                StageRequest(
                    OP_LM_KV_IMPORT,
                    inputs=pulled.outputs,
                    meta={"context": meta["context"], "layers": meta["layers"]},
                )
            )
        moved = sum(int(a.nbytes) for a in (export.outputs if meta.get("to") else pulled.outputs).values())
        return StageResponse(
            request.request_id,
            meta={**reply.meta, "moved_bytes": moved, "seconds": time.perf_counter() - started},
        )

    def _holding(self, context: str) -> KVShard | None:
        spans = self.kv.spans(context)
        return self.kv.get(context, *spans[0]) if spans else None

    def _keep(self, shard: KVShard, layers: list[int]) -> None:
        """Replace ``shard`` by the part of it for ``layers`` (contiguous), erasing the rest."""
        if not layers:
            self.kv.discard(shard.context_id, *shard.layers)
            return
        first, last = layers[0], layers[-1]
        lo, hi = first - shard.layers[0], last - shard.layers[0] + 1
        kept = KVShard(
            shard.context_id,
            (first, last),
            [a.copy() for a in shard.keys[lo:hi]],
            [a.copy() for a in shard.values[lo:hi]],
        )
        self.kv.put(kept)  # overlaps the old shard, which is erased

    # --- what this tier can do ------------------------------------------------------------------

    def layer_seconds(self, steps: int = 8, past: int = 32) -> float:
        """Measured decode seconds per layer per token here (the whole model, ``past`` tokens of context).

        Measured once, on this tier's real path (its threads, provider and simulated slowdown):
        the span planner reads the tier's speed from this, never from a setting. The whole model,
        head included (in a small model the head weighs as much as several layers), and its session
        is closed afterwards unless this tier runs every layer anyway: a node keeps only its span.
        """
        if self._layer_s is None:
            probe = Span(0, self.runner.num_layers - 1)
            was_open = self.runner.is_open(probe)
            kv = self.runner.empty_kv(probe)
            prompt = np.zeros((1, past), np.int64)
            kv = self.runner.step(probe, prompt, kv).present
            times = []
            for _ in range(steps):
                started = time.perf_counter()
                kv = self.runner.step(probe, np.zeros((1, 1), np.int64), kv).present
                times.append(self._slow.stretch(("probe", probe.first, probe.last), started))
            if not was_open:
                self.runner.close(probe)
            self._layer_s = statistics.median(times) / len(probe.layers)
        return self._layer_s

    async def info(self) -> dict[str, MetaValue]:
        layer_s = await asyncio.to_thread(self.layer_seconds)
        rtts: dict[str, float] = {}
        if self.peers is not None:
            for peer in self.peers.addresses:
                rtts[peer] = await self.ping(peer)
        out: dict[str, Any] = {
            "tier": self.tier,
            "layer_s": layer_s,
            "peers_rtt": json.dumps(rtts),
            "kv": json.dumps({c: dataclasses.asdict(st) for c, st in self.kv.stats().items()}),
        }
        if self.memory_bytes is not None:
            out["memory_bytes"] = self.memory_bytes
        return out

    async def ping(self, peer: str, rounds: int = 3) -> float:
        """Median round trip of an empty request to ``peer`` (inf if it does not answer)."""
        assert self.peers is not None
        times: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            try:
                await self.peers.call(peer, StageRequest("info"))
            except Exception:  # a peer that is down has no RTT: the planner sees it unusable
                return float("inf")
            times.append(time.perf_counter() - started)
        return statistics.median(times)
