"""The ring: a decode step's token goes from the last tier straight back to the entry point.

Nested, a step crosses every hop twice: device -> edge -> cloud, then the token cloud -> edge ->
device, each crossing a write, a sleeping reader's wake-up, an open and a seal. On a ring the
entry point *pushes* the step to the edge (transport/lane.py, ``Kind.PUSH``: nothing is answered
on that lane when all goes well), the edge computes and pushes it on to the cloud, and the cloud
writes the reply on a lane the entry point holds there: three crossings, and no message off the
token's path (exo runs its decode as a ring the same way).

The held lane is the entry point's *ring subscription* at the last holder: a second lane whose
first request, ``lm_ring_subscribe`` with the subscription's unguessable id, is answered at once
and then keeps the lane for the ring's replies (:class:`RingBoard`; the lane's own thread only
waits for it to close, since a TLS connection must not be read and written at once). A ring step
carries that id and its own key; the cloud's reply carries the key back.

A reply goes back the way it came whenever it cannot go round: the edge's error (or the reply of
a step it could not push on) is written back on the entry point's lane to it, which the entry
point watches as well as its held lane (``transport.lane.ring_exchange``). The cloud's error goes
round like a token. A lane that breaks or stays silent past its timeout is closed, and the step is
sent again over the data plane (``past_len`` makes that safe).
"""

from __future__ import annotations

import logging
import secrets
import threading

from tierflow.errors import InvalidInputError
from tierflow.transport.lane import RING_KEY, HeldLane
from tierflow.transport.messages import PeerInfo, StageRequest, StageResponse

OP_LM_RING_SUBSCRIBE = "lm_ring_subscribe"
RING_TO_KEY = "ring_to"  # step meta: the subscription the step's reply goes to
RING_RELAYED_KEY = "ring_relayed"  # step meta: pushed on by its first hop; its reply goes round
RING_PUSHED_KEY = "ring_pushed"  # a first hop's reply meta: pushed on, nothing to write back
# step meta: what the first hop reports of itself (its compute and time), carried to the reply
CARRIED_PREFIX = "ring_carried."
__all__ = [
    "CARRIED_PREFIX",
    "OP_LM_RING_SUBSCRIBE",
    "RING_KEY",
    "RING_PUSHED_KEY",
    "RING_RELAYED_KEY",
    "RING_TO_KEY",
    "RingBoard",
    "new_ring_id",
]
_log = logging.getLogger(__name__)


def new_ring_id() -> str:
    """An unguessable id: a subscription's, or a step's key."""
    return secrets.token_hex(16)


class RingBoard:
    """A node's ring subscriptions, and where pushed steps' replies go (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, tuple[HeldLane, int]] = {}  # id -> its lane, its request id

    def __len__(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, request: StageRequest, peer: PeerInfo, lane: HeldLane) -> StageResponse | None:
        """``lm_ring_subscribe``: answer at once, then hold ``lane`` for the ring's replies until the
        peer closes it."""
        sub = str(request.meta.get(RING_TO_KEY, ""))
        if not sub:
            raise InvalidInputError(f"{OP_LM_RING_SUBSCRIBE} names no subscription")
        with self._lock:
            if sub in self._subscriptions:
                raise InvalidInputError(f"ring subscription {sub[:8]}... exists already")
            self._subscriptions[sub] = (lane, request.request_id)
        try:
            if lane.reply(request.request_id, StageResponse(request.request_id, meta={RING_TO_KEY: sub})):
                lane.wait_closed()
        finally:
            with self._lock:
                del self._subscriptions[sub]
        return None

    def take(self, request: StageRequest, response: StageResponse) -> bool:
        """A pushed step's ``response`` (``LaneServer``'s ``on_pushed``): True when it went round the
        ring (or on: nothing to write back), False to have it written back to the tier that pushed it."""
        if RING_PUSHED_KEY in response.meta:
            return True  # this tier pushed the step on: its reply comes from further round
        if RING_RELAYED_KEY not in request.meta:
            return False  # this tier is the ring's first hop: its own reply goes back
        sub = str(request.meta.get(RING_TO_KEY, ""))
        with self._lock:
            found = self._subscriptions.get(sub)
        if found is None:  # the entry point went away: nobody waits for it
            _log.info("a ring reply for a subscription that is gone (%s...) dropped", sub[:8])
            return True
        lane, request_id = found
        response.meta[RING_KEY] = str(request.meta.get(RING_KEY, ""))
        for key, value in request.meta.items():
            if key.startswith(CARRIED_PREFIX):
                response.meta[key.removeprefix(CARRIED_PREFIX)] = value
        lane.reply(request_id, response)
        return True
