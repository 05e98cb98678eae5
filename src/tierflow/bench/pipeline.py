"""`tierflow bench pipeline`: a split model over real nodes and the link emulator, sequential vs overlapped.

One remote node process (the cloud tier, SIMULATED ``remote_slowdown`` times slower when
asked) runs the second half of a bundled model (``demo-vision`` by default, or ``random-image``);
the device (this process, SIMULATED ``device_slowdown`` times slower) runs the first half and
sends the cut tensors, INT8 quantized, through a user-space emulated link with the named profile;
the outputs come back the same way.

The cut is the block boundary that balances the pipeline best (measured locally) among the cuts
at which **both compute stages do work**: the device's and the remote stage each take at least
``MIN_STAGE_SHARE`` of the slowest stage. Overlap is only overlap when there is something on
both sides to overlap: a cut that leaves the device (nearly) nothing to compute measures how the
link directions and the remote tier overlap one another, not the device with them. When no cut
qualifies, the best cut is used and ``every_stage_works`` is False in its figures.

Figures per profile:
  sequential_rps  requests/s when each request finishes before the next starts
  pipelined_rps   requests/s when the device computes request i+1 while i is remote
  bound_rps       1 / the slowest stage, every stage measured during the run: device compute,
                  remote compute, and each link direction's occupancy per request during the
                  pipelined run (bytes that crossed it / its bandwidth, plus the time it stalled
                  repairing lost packets); RTT is latency, not occupancy, so it does not bound
                  throughput when several requests are in flight
  speedup         pipelined / sequential   (the seed claims 2.3x)
  overlap_bound   sum of the stages / the slowest stage: the speed-up perfect overlap would give
                  over running the stages one after another (RTT and per-request overheads left out)
  efficiency      pipelined / bound        (target >= 0.9)
  every_stage_works  the device and the remote stage each took >= MIN_STAGE_SHARE of the slowest
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tierflow.engine.split_runner import SplitPlan, SplitRunner
from tierflow.errors import InvalidModelError
from tierflow.model import metadata as md
from tierflow.model.registry import resolve_model
from tierflow.node.launch import start_node
from tierflow.runtime.generic import GenericRunner
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner
from tierflow.transport.certs import init_pki
from tierflow.transport.linkemu import LinkEmulator
from tierflow.transport.tls import load_identity
from tierflow.types import QuantMode, Tier
from tierflow.types.links import get_profile, transfer_s

DEFAULT_MODEL = "demo-vision"
INT8_FACTOR = 0.25  # bytes on the wire per fp32 byte with int8 frames (scales are negligible)
MIN_STAGE_SHARE = 0.1  # a compute stage below this share of the slowest stage does no work worth overlapping
COMPUTE_STAGES = ("device_s", "remote_s")


def every_stage_works(stages: dict[str, float]) -> bool:
    """Do the device and the remote stage each take at least ``MIN_STAGE_SHARE`` of the slowest stage?"""
    slowest = max(stages.values())
    return slowest > 0 and all(stages[k] >= MIN_STAGE_SHARE * slowest for k in COMPUTE_STAGES)


def _median_time(fn: Any, repeats: int) -> float:
    fn()  # warm up: session creation, allocations
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def choose_cut(
    runner: StageRunner,
    feeds: dict[str, np.ndarray],
    blocks: list[str],
    outputs: list[str],
    up_bps: float,
    down_bps: float,
    remote_slowdown: float = 1.0,
) -> tuple[str, dict[str, float]]:
    """The block boundary whose slowest stage (device, uplink, remote, downlink) is fastest, measured
    here, among those at which both compute stages do work (:func:`every_stage_works`); the best of
    all cuts when none does."""
    best: tuple[float, str, dict[str, float]] | None = None
    best_working: tuple[float, str, dict[str, float]] | None = None
    whole = runner.run(feeds, outputs)
    # the whole model at this machine's speed (the device's slowdown taken out)
    total = _median_time(lambda: runner.run(feeds, outputs), 3) / runner.slowdown
    returned = sum(v.nbytes for v in whole.values()) * INT8_FACTOR
    for block in blocks:
        head = runner.run(feeds, [block])
        crossing = runner.cutter.needed_inputs(outputs, {*feeds, block})
        device_s = _median_time(lambda b=block: runner.run(feeds, [b]), 3)
        sent = sum((head[n] if n in head else feeds[n]).nbytes for n in crossing) * INT8_FACTOR
        stages = {
            "device_s": device_s,
            "remote_s": max(total - device_s / runner.slowdown, 0.0) * remote_slowdown,
            "uplink_s": transfer_s(sent, up_bps),
            "downlink_s": transfer_s(returned, down_bps),
        }
        slowest = max(stages.values())
        if best is None or slowest < best[0]:
            best = (slowest, block, stages)
        if every_stage_works(stages) and (best_working is None or slowest < best_working[0]):
            best_working = (slowest, block, stages)
    chosen = best_working or best
    assert chosen is not None
    return chosen[1], chosen[2]


async def _measure(
    runner: SplitRunner, plan: SplitPlan, batch: list[dict[str, np.ndarray]], link: LinkEmulator
) -> dict[str, float]:
    await runner.run(batch[0], plan)  # warm up both ends and the session
    started = time.perf_counter()
    sequential = await runner.run_many(batch, plan, pipelined=False)
    sequential_s = time.perf_counter() - started
    before = link.stats()
    started = time.perf_counter()
    await runner.run_many(batch, plan, pipelined=True, window=4)
    pipelined_s = time.perf_counter() - started
    after = link.stats()
    n = len(batch)
    profile = link.profile

    def occupancy(bytes_moved: int, stall_s: float, bps: float) -> float:
        # per request: serialisation at the link's rate plus the time the link stalled
        # repairing lost packets during this same run
        return (transfer_s(bytes_moved, bps) + stall_s) / n

    stages = {
        "device_s": statistics.median(r.device_s for r in sequential),
        "remote_s": statistics.median(sum(r.remote_compute_s.values()) for r in sequential),
        "uplink_s": occupancy(
            after.up.bytes - before.up.bytes, after.up.stall_s - before.up.stall_s, profile.up_bps
        ),
        "downlink_s": occupancy(
            after.down.bytes - before.down.bytes, after.down.stall_s - before.down.stall_s, profile.down_bps
        ),
    }
    bound_rps = 1.0 / max(stages.values())
    sequential_rps = n / sequential_s
    pipelined_rps = n / pipelined_s
    return {
        "sequential_rps": round(sequential_rps, 3),
        "pipelined_rps": round(pipelined_rps, 3),
        "bound_rps": round(bound_rps, 3),
        "speedup": round(pipelined_rps / sequential_rps, 3),
        "overlap_bound": round(sum(stages.values()) / max(stages.values()), 3),
        "efficiency": round(pipelined_rps / bound_rps, 3),
        "every_stage_works": every_stage_works(stages),
        **{f"stage_{k}": round(v * 1000, 2) for k, v in stages.items()},
    }


def run_pipeline_bench(
    profiles: list[str],
    requests: int = 24,
    threads: int = 1,
    device_slowdown: float = 1.0,
    model: str = DEFAULT_MODEL,
    remote_slowdown: float = 1.0,
) -> dict[str, Any]:
    """Sequential vs pipelined requests per profile (see the module docstring); JSON-ready figures."""
    model_path = resolve_model(model)
    proto = onnx.load(str(model_path))
    named = md.blocks(proto)
    if named is None:
        raise InvalidModelError(f"{model} names no block boundaries (metadata {md.BLOCKS}) to cut at")
    outputs = [o.name for o in proto.graph.output]
    blocks = [b for b in named if b not in outputs]
    options = SessionOptions(intra_op_threads=threads)
    inputs = GenericRunner.open(model_path, options)
    batch = [inputs.prepare_inputs(seed=i) for i in range(requests)]
    local = StageRunner(proto, options, slowdown=device_slowdown)
    results: dict[str, Any] = {
        "model": model,
        "requests": requests,
        "threads_per_tier": threads,
        "simulated_device_slowdown": device_slowdown,
        "simulated_remote_slowdown": remote_slowdown,
        "min_stage_share": MIN_STAGE_SHARE,
        "seed_claim_speedup": 2.3,
        "profiles": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "pki"
        init_pki(certs, [Tier.DEVICE, Tier.CLOUD])
        cloud = start_node(Tier.CLOUD, model_path, certs, threads=threads, slowdown=remote_slowdown)
        try:
            for name in profiles:
                profile = get_profile(name)
                cut, _ = choose_cut(
                    local, batch[0], blocks, outputs, profile.up_bps, profile.down_bps, remote_slowdown
                )
                plan = SplitPlan(
                    stages=((Tier.DEVICE, (cut,)), (Tier.CLOUD, tuple(outputs))), returns=tuple(outputs)
                )
                with LinkEmulator(cloud.data_plane, profile) as link:
                    runner = SplitRunner(
                        proto,
                        load_identity(certs, Tier.DEVICE),
                        {Tier.CLOUD: link.hostport},
                        options,
                        quant=QuantMode.INT8,
                        slowdown=device_slowdown,
                    )

                    async def go(
                        r: SplitRunner = runner, p: SplitPlan = plan, lk: LinkEmulator = link
                    ) -> dict[str, float]:
                        try:
                            return await _measure(r, p, batch, lk)
                        finally:
                            await r.close()

                    figures = asyncio.run(go())
                results["profiles"][name] = {"cut": cut, **figures}
        finally:
            cloud.stop()
    return results
