"""Running one model split across tiers, from the device.

The device computes its own stages locally, then sends what the first remote
stage needs to that tier with the rest of the route; each tier forwards to the
next (see :mod:`tierflow.transport.route`) and the final outputs come back.
``run_many(pipelined=True)`` overlaps the device's work on request i+1 with the
remote tiers' work on request i.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from tierflow.errors import PlanError
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner
from tierflow.transport.messages import StageRequest
from tierflow.transport.peers import PeerClients, Peers
from tierflow.transport.route import (
    RETURN_KEY,
    ROUTE_KEY,
    Hop,
    compute_times,
    encode_names,
    encode_route,
)
from tierflow.transport.tls import Identity
from tierflow.types import QuantMode, Tier
from tierflow.wire.privacy import GaussianMechanism, PrivacyAccountant


@dataclass(frozen=True)
class SplitPlan:
    """Stages in order: ``(tier, outputs)``; the device's stages (if any) come first."""

    stages: tuple[tuple[str, tuple[str, ...]], ...]
    returns: tuple[str, ...]  # the tensors the caller wants back (usually the graph outputs)

    def __post_init__(self) -> None:
        if not self.stages:
            raise PlanError("a split plan needs at least one stage")
        tiers = [t for t, _ in self.stages]
        device_count = tiers.count(Tier.DEVICE)
        if tiers[:device_count] != [Tier.DEVICE] * device_count:
            raise PlanError("device stages must come before remote ones")

    @property
    def device_stages(self) -> list[tuple[str, ...]]:
        return [outs for tier, outs in self.stages if tier == Tier.DEVICE]

    @property
    def remote_hops(self) -> list[Hop]:
        return [Hop(tier, outs) for tier, outs in self.stages if tier != Tier.DEVICE]


@dataclass
class SplitResult:
    outputs: dict[str, np.ndarray]
    total_s: float
    device_s: float
    remote_compute_s: dict[str, float] = field(default_factory=dict)

    @property
    def network_s(self) -> float:
        """What is left of the round trip once every tier's compute is taken out."""
        return max(self.total_s - self.device_s - sum(self.remote_compute_s.values()), 0.0)


class SplitRunner:
    """Runs :class:`SplitPlan` s of one model; async, one persistent session per peer tier."""

    def __init__(
        self,
        model: onnx.ModelProto,
        identity: Identity,
        peers: dict[str, str],
        options: SessionOptions | None = None,
        quant: QuantMode = QuantMode.RAW,
        slowdown: float = 1.0,
        privacy: GaussianMechanism | None = None,
        accountant: PrivacyAccountant | None = None,
        clients: Peers | None = None,
    ) -> None:
        self.stages = StageRunner(model, options, slowdown=slowdown)
        # ``clients``: how requests reach ``peers`` (default: the mTLS data plane; tests pass a fake)
        self.peers: Peers = clients if clients is not None else PeerClients(identity, peers)
        self.quant = quant
        self.privacy = privacy
        self.accountant = accountant or (PrivacyAccountant() if privacy else None)

    def _release(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Differential-privacy noise on the float tensors that leave the device (when configured).

        Each noised tensor is one release of the Gaussian mechanism; the accountant sums them and
        refuses (PrivacyBudgetError) before anything is sent once the budget would be exceeded.
        """
        if self.privacy is None:
            return tensors
        floats = [n for n, t in tensors.items() if np.issubdtype(t.dtype, np.floating)]
        assert self.accountant is not None
        self.accountant.spend(self.privacy.epsilon, self.privacy.delta, releases=len(floats))
        return {n: self.privacy.apply(t) if n in floats else t for n, t in tensors.items()}

    def run_device(
        self, inputs: dict[str, np.ndarray], plan: SplitPlan
    ) -> tuple[dict[str, np.ndarray], float]:
        """The device's part of ``plan`` (blocking): all tensors known after it, and its compute time."""
        started = time.perf_counter()
        known = dict(inputs)
        for outputs in plan.device_stages:
            known.update(self.stages.run(known, list(outputs)))
        return known, time.perf_counter() - started

    async def run_remote(
        self, known: dict[str, np.ndarray], plan: SplitPlan
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        hops = plan.remote_hops
        if not hops:
            return {n: known[n] for n in plan.returns}, {}
        first, rest = hops[0], hops[1:]
        needed = self.stages.cutter.needed_along([h.outputs for h in hops], known)
        request = StageRequest(
            "run",
            inputs=self._release({n: known[n] for n in needed}),
            outputs=list(first.outputs),
            meta={ROUTE_KEY: encode_route(rest), RETURN_KEY: encode_names(plan.returns)},
            quant=self.quant,
        )
        reply = await self.peers.call(first.peer, request)
        outputs = {n: known[n] for n in plan.returns if n in known}
        outputs.update(reply.outputs)
        missing = [n for n in plan.returns if n not in outputs]
        if missing:
            raise PlanError(f"the plan does not produce {', '.join(missing)}")
        return outputs, compute_times(reply.meta)

    async def run(self, inputs: dict[str, np.ndarray], plan: SplitPlan) -> SplitResult:
        started = time.perf_counter()
        known, device_s = await asyncio.to_thread(self.run_device, inputs, plan)
        outputs, remote = await self.run_remote(known, plan)
        return SplitResult(outputs, time.perf_counter() - started, device_s, remote)

    async def run_many(
        self, batch: Sequence[dict[str, np.ndarray]], plan: SplitPlan, *, pipelined: bool, window: int = 4
    ) -> list[SplitResult]:
        """Run every input; pipelined, the device starts request i+1 while request i is remote."""
        if not pipelined:
            return [await self.run(inputs, plan) for inputs in batch]
        slots = asyncio.Semaphore(window)
        tasks: list[asyncio.Task[SplitResult]] = []

        async def finish(known: dict[str, np.ndarray], started: float, device_s: float) -> SplitResult:
            try:
                outputs, remote = await self.run_remote(known, plan)
                return SplitResult(outputs, time.perf_counter() - started, device_s, remote)
            finally:
                slots.release()

        for inputs in batch:
            await slots.acquire()
            started = time.perf_counter()
            known, device_s = await asyncio.to_thread(self.run_device, inputs, plan)
            tasks.append(asyncio.create_task(finish(known, started, device_s)))
        return list(await asyncio.gather(*tasks))

    async def close(self) -> None:
        await self.peers.close()
