"""Routes: a split run that goes on from one tier to the next.

A stage request may carry the rest of its journey in ``meta["route"]``: the
hops after this one, each naming the peer tier and the tensors it computes.
A node computes its own stage, forwards what the next stage needs, and
returns the tensors the caller asked back (``meta["return"]``) together with
what came back from further down the route. Each hop adds its compute time
as ``meta["compute_s.<tier>"]`` so the caller learns every tier's speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tierflow.errors import InvalidInputError
from tierflow.transport.messages import MetaValue

ROUTE_KEY = "route"
RETURN_KEY = "return"
COMPUTE_PREFIX = "compute_s."


@dataclass(frozen=True)
class Hop:
    peer: str  # the tier (certificate name) that runs this hop
    outputs: tuple[str, ...]  # the tensors it computes


def encode_route(hops: list[Hop]) -> str:
    return json.dumps([{"peer": h.peer, "outputs": list(h.outputs)} for h in hops])


def decode_route(meta: dict[str, MetaValue]) -> list[Hop]:
    raw = meta.get(ROUTE_KEY)
    if raw is None or raw == "":
        return []
    try:
        items = json.loads(str(raw))
        return [Hop(str(i["peer"]), tuple(str(o) for o in i["outputs"])) for i in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"malformed route in request: {exc}") from exc


def encode_names(names: list[str] | tuple[str, ...]) -> str:
    return json.dumps(list(names))


def decode_names(meta: dict[str, MetaValue], key: str) -> list[str]:
    raw = meta.get(key)
    if raw is None or raw == "":
        return []
    try:
        names = json.loads(str(raw))
    except ValueError as exc:
        raise InvalidInputError(f"malformed '{key}' list in request: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInputError(f"'{key}' must be a list of tensor names")
    return names


def compute_times(meta: dict[str, MetaValue]) -> dict[str, float]:
    """``{tier: seconds}`` reported along a route."""
    return {k.removeprefix(COMPUTE_PREFIX): float(v) for k, v in meta.items() if k.startswith(COMPUTE_PREFIX)}
