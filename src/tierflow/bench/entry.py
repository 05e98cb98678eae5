"""The benchmark process as a deployment's device node: its own span and the entry point's driver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import onnx

from tierflow.engine.lm_hop import LMHop
from tierflow.engine.sharded import GenerationOutcome, ShardedLM, Spans
from tierflow.node.deploy import LocalDeployment
from tierflow.node.entry import sharded_lm
from tierflow.runtime.lm import SamplingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.transport.lane import DEFAULT_POLL_S, Lanes
from tierflow.transport.peers import PeerClients
from tierflow.transport.tls import load_identity
from tierflow.types.links import LinkProfile
from tierflow.types.tiers import Tier


@contextlib.asynccontextmanager
async def device_entry(
    path: Path,
    name: str,
    deployment: LocalDeployment,
    memory_bytes: int | None = None,
    *,
    lanes: bool = True,
    model: onnx.ModelProto | None = None,
    lane_poll_ms: float | None = None,
) -> AsyncIterator[ShardedLM]:
    """A started :class:`ShardedLM` over ``deployment``'s edge and cloud, as the device node builds it
    (one ONNX Runtime thread, the deployment's links as planning estimates); EOS is ignored so that
    every run decodes what it asks for. ``model``: the LM at ``path``, already loaded (two entry
    points in one process share it; a 24-layer Llama is 1.4 GB); ``lane_poll_ms``: its lanes' polling
    limit (default: a node's)."""
    identity = load_identity(deployment.certs, Tier.DEVICE.value)
    peers = PeerClients(identity, deployment.peers)
    poll_s = DEFAULT_POLL_S if lane_poll_ms is None else lane_poll_ms / 1000
    lane_set = Lanes(identity, deployment.peers, poll_s=poll_s) if lanes else None
    hop = LMHop(
        model if model is not None else onnx.load(str(path)),
        Tier.DEVICE.value,
        peers,
        options=SessionOptions(intra_op_threads=1),
        memory_bytes=memory_bytes,
        lanes=lane_set,
    )
    links: dict[frozenset[Tier], LinkProfile] = {}
    if deployment.backhaul is not None:  # an emulated deployment: what its links are set to
        for a, b in ((Tier.DEVICE, Tier.EDGE), (Tier.EDGE, Tier.CLOUD)):
            links[frozenset((a, b))] = deployment.hop_profile(a, b)
    lm = sharded_lm(hop, name, links=links)
    lm.eos = None
    try:
        await lm.start()
        yield lm
    finally:
        if lane_set is not None:
            await lane_set.close()
        await peers.close()


async def finish(
    lm: ShardedLM, context: str, tokens: list[int], kv_len: int, spans: Spans, config: SamplingConfig
) -> GenerationOutcome:
    """Run one generation to its end; its outcome."""
    outcome: GenerationOutcome | None = None
    async for item in lm.generate(context, tokens, kv_len, spans, config, prompt_tokens=len(tokens)):
        if isinstance(item, GenerationOutcome):
            outcome = item
    if outcome is None:
        raise RuntimeError("the generation ended without an outcome")
    return outcome
