"""``tierflow bench generate``: a language model served across tiers, per link profile.

For each model and each link profile, edge and cloud are real node processes started by
:func:`tierflow.node.deploy.deploy_local` (the wiring ``tierflow up`` uses), behind the user-space
link emulator (SIMULATED links); the benchmark process is the device, the entry point, driving
them through :class:`tierflow.engine.sharded.ShardedLM` as the device node does. Each placement
decodes the same number of tokens greedily from the same prompt, EOS ignored (as llama.cpp's
``llama-bench`` does):

- ``device-only``, ``edge-only``, ``cloud-only``: every layer on one tier (the device then sends
  token ids and gets tokens back);
- ``split``: the layers in thirds, device -> edge -> cloud.

A placement a tier's memory budget cannot hold is reported as infeasible and not run (the device's
SIMULATED budget is set below the larger model's size, so that model needs the other tiers).

Figures per placement: decode ``tokens_per_s``, ``ttft_s`` (the prompt's prefill and the first
token), and the per-token stage compute of each tier (the decode run's compute less a one-token
run's, which is the prefill, over the decode steps). For remote placements, ``bound_tokens_per_s``
is ``1 / (sum of per-token stage compute + sum over the hops of the link's RTT and the hidden
state's transfer time)`` and ``efficiency`` is measured tokens/s over that bound. ``loopback`` runs
with no emulated links at all, and there the split is also compared with the unsplit model decoding
in one process as a one-tier placement runs it (``split_over_local``, the runs alternating; see
:class:`OneProcess`), one ONNX Runtime thread everywhere,
and so is the same split over a second pair of nodes with their decode lanes switched off
(``split_over_local_data_plane``: every step over the data plane; transport/lane.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tierflow.bench.entry import device_entry, finish
from tierflow.bench.llamacpp import LlamaCpp
from tierflow.compiler.random_hf import LlamaShape, ensure_random_llama
from tierflow.context.ids import new_context_id
from tierflow.engine.sharded import GenerationOutcome, ShardedLM, Spans, spans_text
from tierflow.errors import ConfigError, PlanError
from tierflow.model.lm_layers import Span
from tierflow.model.registry import resolve_model
from tierflow.node.deploy import LocalDeployment, deploy_local
from tierflow.runtime.lm import SamplingConfig
from tierflow.runtime.lm_span import SpanRunner
from tierflow.runtime.session import SessionOptions
from tierflow.transport.loop import run
from tierflow.types.links import LinkProfile, get_profile, transfer_s
from tierflow.types.quant import QuantMode
from tierflow.types.tiers import Tier

LOOPBACK = "loopback"  # no emulated links: the nodes' own sockets
PLACEMENTS = ("device-only", "edge-only", "cloud-only", "split")
PROMPT = "Return the number of items in a container. The argument may be a sequence or a collection"


@dataclass(frozen=True)
class BenchModel:
    """A model to measure; ``device_memory_mib`` is the device's SIMULATED budget (None: unlimited)."""

    name: str
    path: Path
    device_memory_mib: float | None = None
    shape: str | None = None  # a random-init Llama's shape (LLAMA_SHAPES), which llama.cpp can run too


def placement_spans(placement: str, num_layers: int) -> Spans:
    whole = Span(0, num_layers - 1)
    if placement == "device-only":
        return {Tier.DEVICE: whole}
    if placement == "edge-only":
        return {Tier.EDGE: whole}
    if placement == "cloud-only":
        return {Tier.CLOUD: whole}
    if placement == "split":
        a, b = max(num_layers // 3, 1), max(2 * num_layers // 3, 2)
        return {Tier.DEVICE: Span(0, a - 1), Tier.EDGE: Span(a, b - 1), Tier.CLOUD: Span(b, num_layers - 1)}
    raise ConfigError(f"unknown placement {placement!r}; known: {', '.join(PLACEMENTS)}")


def hop_links(spans: Spans, deployment: LocalDeployment) -> list[LinkProfile]:
    """The link each hop of the placement's route crosses (none over plain loopback)."""
    if deployment.backhaul is None:
        return []
    path = [Tier.DEVICE, *(t for t in spans if t is not Tier.DEVICE)]
    return [deployment.hop_profile(a, b) for a, b in zip(path, path[1:], strict=False)]


async def _run_once(lm: ShardedLM, ids: list[int], spans: Spans, tokens: int, tag: str) -> GenerationOutcome:
    outcome = await finish(lm, tag, ids, 0, spans, SamplingConfig.greedy(tokens))
    await lm.drop(tag)
    if len(outcome.generated) != tokens:
        raise RuntimeError(f"the {tag} run ended early")
    return outcome


async def measure_placement(
    lm: ShardedLM, ids: list[int], spans: Spans, tokens: int, repeats: int, deployment: LocalDeployment
) -> dict[str, Any]:
    """Decode ``tokens`` tokens ``repeats`` times under ``spans``; the median figures."""
    await _run_once(lm, ids, spans, tokens, new_context_id())  # warm-up: sessions, shapes, connections
    prefill = await _run_once(lm, ids, spans, 1, new_context_id())
    runs = [await _run_once(lm, ids, spans, tokens, new_context_id()) for _ in range(repeats)]
    best = sorted(runs, key=lambda o: o.tokens_per_s)[len(runs) // 2]
    steps = tokens - 1
    compute = {
        tier: max(seconds - prefill.stats.compute_s.get(tier, 0.0), 0.0) / steps
        for tier, seconds in best.stats.compute_s.items()
    }
    hidden = lm.costs.hidden_bytes_per_token
    link_s = 0.0
    for link in hop_links(spans, deployment):
        link_s += link.rtt_s + transfer_s(hidden, link.up_bps) + transfer_s(64, link.down_bps)
    bound = 1.0 / (sum(compute.values()) + link_s)
    figures: dict[str, Any] = {
        "spans": spans_text(spans),
        "tokens_per_s": round(statistics.median(o.tokens_per_s for o in runs), 2),
        "ttft_s": round(statistics.median(o.ttft_s for o in runs), 4),
        "compute_ms_per_token": {t: round(s * 1e3, 3) for t, s in compute.items()},
        "link_ms_per_token": round(link_s * 1e3, 3),
        "bound_tokens_per_s": round(bound, 2),
    }
    figures["efficiency"] = round(figures["tokens_per_s"] / bound, 3)
    return figures


class OneProcess:
    """The unsplit model decoding in this process the way a tier holding every layer runs it: one
    span runner with all the layers (and its kept preambles), one ONNX Runtime thread. So the split
    and the one process differ only in the split."""

    def __init__(self, model: onnx.ModelProto) -> None:
        # the benchmark's own loaded model: a second copy of a 24-layer Llama is 1.4 GB more
        self.runner = SpanRunner(model, SessionOptions(intra_op_threads=1))
        self.span = Span(0, self.runner.num_layers - 1)

    def tokens_per_s(self, ids: list[int], tokens: int) -> float:
        """Greedy decode tokens/s of ``tokens`` new tokens after ``ids`` (the steps after the first
        token over their time, as :attr:`GenerationOutcome.tokens_per_s` counts them)."""
        kv = self.runner.empty_kv(self.span)
        step = np.asarray([ids], np.int64)
        started = 0.0
        for made in range(tokens):
            out = self.runner.step(self.span, step, kv)
            assert out.logits is not None
            kv, step = out.present, np.asarray([[int(np.argmax(out.logits[0, -1]))]], np.int64)
            if made == 0:
                started = time.perf_counter()
        return (tokens - 1) / (time.perf_counter() - started)


async def split_over_local(
    lm: ShardedLM,
    model: onnx.ModelProto,
    ids: list[int],
    spans: Spans,
    tokens: int,
    repeats: int,
    data_plane: ShardedLM | None = None,
    anchor: tuple[LlamaCpp, str, list[str]] | None = None,
) -> dict[str, Any]:
    """The split's decode tokens/s over the unsplit model's in this one process (one ONNX Runtime
    thread), the runs alternating so that a burst of load on the machine hits all alike. With
    ``data_plane`` (the same split over nodes whose decode lanes are off) that split too, and with
    ``anchor`` (llama.cpp, the model's shape, two running RPC servers) llama.cpp's one process and
    split between them."""
    local = OneProcess(model)
    local.tokens_per_s(ids, tokens)  # warm-up
    if data_plane is not None:
        await _run_once(data_plane, ids, spans, tokens, new_context_id())
    split_rates: list[float] = []
    plane_rates: list[float] = []
    local_rates: list[float] = []
    anchor_rates: list[tuple[float, float]] = []
    for _ in range(max(repeats, 5)):
        split_rates.append((await _run_once(lm, ids, spans, tokens, new_context_id())).tokens_per_s)
        if data_plane is not None:
            outcome = await _run_once(data_plane, ids, spans, tokens, new_context_id())
            plane_rates.append(outcome.tokens_per_s)
        local_rates.append(local.tokens_per_s(ids, tokens))
        if anchor is not None:
            llama, shape, servers = anchor
            their_one = await asyncio.to_thread(llama.one_process, shape, tokens)
            anchor_rates.append((their_one, await asyncio.to_thread(llama.split, shape, tokens, servers)))
    split, one = statistics.median(split_rates), statistics.median(local_rates)
    # each round's own ratio: the machine's speed moves between rounds more than within one
    ours = [s / o for s, o in zip(split_rates, local_rates, strict=True)]
    out: dict[str, Any] = {
        "split_tokens_per_s": round(split, 2),
        "one_process_tokens_per_s": round(one, 2),
        "split_over_local": round(split / one, 3),
        "split_over_local_by_round": [round(r, 3) for r in ours],
    }
    if plane_rates:
        plane = statistics.median(plane_rates)
        out["split_data_plane_tokens_per_s"] = round(plane, 2)
        out["split_over_local_data_plane"] = round(plane / one, 3)
    if anchor_rates:
        their_one = statistics.median(r[0] for r in anchor_rates)
        their_split = statistics.median(r[1] for r in anchor_rates)
        out["llamacpp_one_process_tokens_per_s"] = round(their_one, 2)
        out["llamacpp_split_tokens_per_s"] = round(their_split, 2)
        out["llamacpp_split_over_local"] = round(their_split / their_one, 3)
        theirs = [s / o for o, s in anchor_rates]
        out["llamacpp_split_over_local_by_round"] = [round(r, 3) for r in theirs]
        out.update(rounds_against_anchor(ours, theirs))
    return out


def rounds_against_anchor(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, Any]:
    """tierflow's ``split_over_local`` against llama.cpp's, round by round (the rounds of one run are
    what compare on a machine whose speed moves between them): in how many rounds tierflow's is at
    or above, and the median of the rounds' differences (tierflow's less llama.cpp's)."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"need the same rounds on both sides, got {len(ours)} and {len(theirs)}")
    pairs = list(zip(ours, theirs, strict=True))
    return {
        "rounds_at_or_above_llamacpp": f"{sum(a >= b for a, b in pairs)} of {len(pairs)}",
        "median_round_difference_vs_llamacpp": round(statistics.median(a - b for a, b in pairs), 3),
    }


async def token_agreement(
    lm: ShardedLM, ids: list[int], spans: Spans, tokens: int, quant: QuantMode
) -> float:
    """Of the greedy tokens with hidden states in ``quant`` frames, the share equal to the lossless
    split's, position by position (one early difference changes the rest: a strict measure)."""
    exact = (await _run_once(lm, ids, spans, tokens, new_context_id())).generated
    lm.quant, lossless = quant, lm.quant
    try:
        lossy = (await _run_once(lm, ids, spans, tokens, new_context_id())).generated
    finally:
        lm.quant = lossless
    return sum(a == b for a, b in zip(exact, lossy, strict=True)) / len(exact)


async def measure_profile(
    model: BenchModel,
    deployment: LocalDeployment,
    tokens: int,
    repeats: int,
    no_lanes: Callable[[], LocalDeployment] | None = None,
    llamacpp: LlamaCpp | None = None,
    lane_poll_ms: float | None = None,
) -> dict[str, Any]:
    """Every placement over ``deployment``; over loopback also the split against one process, and
    against the same split over the nodes ``no_lanes`` starts (their decode lanes off), and
    llama.cpp's split of the same shape in the same minutes (with ``llamacpp``)."""
    memory = int(model.device_memory_mib * 2**20) if model.device_memory_mib else None
    out: dict[str, Any] = {}
    proto = onnx.load(str(model.path))
    entry = device_entry(model.path, model.name, deployment, memory, model=proto, lane_poll_ms=lane_poll_ms)
    async with entry as lm:
        ids = lm.tokenizer.encode(PROMPT)
        # the split first: its comparisons start more nodes, before the one-tier placements have
        # opened whole-model sessions on the edge and the cloud (the 24-layer Llama is 1.4 GB)
        for placement in sorted(PLACEMENTS, key=lambda p: p != "split"):
            spans = placement_spans(placement, lm.num_layers)
            try:
                predicted = lm.predict(spans)
            except PlanError as exc:
                out[placement] = {"spans": spans_text(spans), "feasible": False, "reason": str(exc)}
                continue
            figures = await measure_placement(lm, ids, spans, tokens, repeats, deployment)
            figures["predicted_tokens_per_s"] = round(1.0 / predicted.token_s, 2)
            out[placement] = figures
            if placement == "split" and deployment.backhaul is None:
                out["vs_one_process"] = await _vs_one_process(
                    lm, model, ids, tokens, repeats, proto, memory, no_lanes, llamacpp
                )
    return {p: out[p] for p in (*PLACEMENTS, "vs_one_process") if p in out}


async def _vs_one_process(
    lm: ShardedLM,
    model: BenchModel,
    ids: list[int],
    tokens: int,
    repeats: int,
    proto: onnx.ModelProto,
    memory: int | None,
    no_lanes: Callable[[], LocalDeployment] | None,
    llamacpp: LlamaCpp | None,
) -> dict[str, Any]:
    split = placement_spans("split", lm.num_layers)
    plain = await asyncio.to_thread(no_lanes) if no_lanes is not None else None
    try:
        async with contextlib.AsyncExitStack() as stack:
            plane = None
            if plain is not None:
                entry = device_entry(model.path, model.name, plain, memory, lanes=False, model=proto)
                plane = await stack.enter_async_context(entry)
            anchor = None
            if llamacpp is not None and model.shape is not None:
                anchor = (llamacpp, model.shape, stack.enter_context(llamacpp.servers()))
            figures = await split_over_local(lm, proto, ids, split, tokens, repeats, plane, anchor)
    finally:
        if plain is not None:
            plain.stop()
    figures["int8_token_agreement"] = round(await token_agreement(lm, ids, split, tokens, QuantMode.INT8), 3)
    return figures


def run_generate_bench(
    models: Sequence[BenchModel],
    profiles: Sequence[str],
    *,
    tokens: int = 64,
    repeats: int = 3,
    on_stage: Any = None,
    llamacpp: LlamaCpp | None = None,
    lane_poll_ms: float | None = None,
) -> dict[str, Any]:
    """Every model over every profile (``loopback``: no emulated links); see the module docstring.
    With ``llamacpp``, the Llama shapes' split over loopback is set beside llama.cpp's;
    ``lane_poll_ms`` sets the decode lanes' polling limit on every tier (default: the nodes')."""
    stage = on_stage or (lambda _msg: None)
    result: dict[str, Any] = {"tokens": tokens, "repeats": repeats, "prompt": PROMPT, "models": {}}
    if lane_poll_ms is not None:
        result["lane_poll_ms"] = lane_poll_ms
    for model in models:
        per_profile: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="tierflow-bench-generate-") as tmp:
            certs = Path(tmp) / "pki"
            for name in profiles:
                access = None if name == LOOPBACK else get_profile(name)
                stage(f"{model.name} over {name}: starting edge and cloud nodes")
                deployment = deploy_local(
                    model.path, certs, access, threads=1, startup_timeout=600.0, lane_poll_ms=lane_poll_ms
                )
                # over loopback, the same split over nodes with their decode lanes off, side by side
                no_lanes = (
                    functools.partial(
                        deploy_local, model.path, certs, None, threads=1, startup_timeout=600.0, lanes=False
                    )
                    if access is None
                    else None
                )
                try:
                    started = time.perf_counter()
                    stage(f"{model.name} over {name}: decoding")
                    per_profile[name] = run(
                        measure_profile(model, deployment, tokens, repeats, no_lanes, llamacpp, lane_poll_ms)
                    )
                    per_profile[name]["wall_s"] = round(time.perf_counter() - started, 1)
                finally:
                    deployment.stop()
        if LOOPBACK in per_profile and "vs_one_process" in per_profile[LOOPBACK]:
            per_profile.update(per_profile[LOOPBACK].pop("vs_one_process"))
        result["models"][model.name] = {"path": str(model.path), **per_profile}
    return result


def default_models(large: str | None) -> list[BenchModel]:
    """demo-lm, and with ``large`` a random-init Llama of that shape (``8x512``, ``24x1024``) whose
    weights are twice the device's budget."""
    models = [BenchModel("demo-lm", resolve_model("demo-lm"))]
    if large:
        shape = LLAMA_SHAPES.get(large)
        if shape is None:
            raise ConfigError(f"unknown Llama shape {large!r}; known: {', '.join(LLAMA_SHAPES)}")
        path = ensure_random_llama(shape)
        weights = sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)
        models.append(BenchModel(shape.name, path, device_memory_mib=weights / 2 / 2**20, shape=large))
    return models


# the shapes llama.cpp's RPC backend was measured on (docs/BENCHMARKS.md)
LLAMA_SHAPES = {
    "8x512": LlamaShape(layers=8, hidden=512, intermediate=1376, heads=8, kv_heads=4),
    "24x1024": LlamaShape(layers=24, hidden=1024, intermediate=2752, heads=16, kv_heads=8),
}
