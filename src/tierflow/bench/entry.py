"""The benchmark process as a deployment's device node: its own span and the entry point's driver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import onnx

from tierflow.engine.lm_hop import LMHop
from tierflow.engine.sharded import ShardedLM
from tierflow.errors import ConfigError
from tierflow.model import metadata as md
from tierflow.model.tokenizer import Tokenizer
from tierflow.node.deploy import LocalDeployment
from tierflow.runtime.session import SessionOptions
from tierflow.transport.peers import PeerClients
from tierflow.transport.tls import load_identity
from tierflow.types.links import BACKHAUL, LinkProfile
from tierflow.types.tiers import Tier


@contextlib.asynccontextmanager
async def device_entry(
    path: Path,
    name: str,
    deployment: LocalDeployment,
    access: LinkProfile | None,
    memory_bytes: int | None = None,
) -> AsyncIterator[ShardedLM]:
    """A started :class:`ShardedLM` over ``deployment``'s edge and cloud, as the device node builds it
    (one ONNX Runtime thread); EOS is ignored so that every run decodes what it asks for."""
    proto = onnx.load(str(path))
    document = md.tokenizer(proto)
    if document is None:
        raise ConfigError(f"{path} carries no tokenizer")
    peers = PeerClients(load_identity(deployment.certs, Tier.DEVICE.value), deployment.peers)
    hop = LMHop(
        proto, Tier.DEVICE.value, peers, options=SessionOptions(intra_op_threads=1), memory_bytes=memory_bytes
    )
    links = {}
    if access is not None:
        links = {frozenset((Tier.DEVICE, Tier.EDGE)): access, frozenset((Tier.EDGE, Tier.CLOUD)): BACKHAUL}
    lm = ShardedLM(
        hop, Tokenizer.from_json(document), model_name=name, max_seq_len=md.max_seq_len(proto), links=links
    )
    lm.eos = None
    try:
        await lm.start()
        yield lm
    finally:
        await peers.close()
