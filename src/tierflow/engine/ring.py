"""The ring: a decode step's token goes from the last tier straight back to the entry point.

Nested, a step crosses every hop twice: device -> edge -> cloud, then the token cloud -> edge ->
device, each crossing a write, a sleeping reader's wake-up, an open and a seal. On a ring the edge
*pushes* the step on to the cloud (transport/lane.py, ``Kind.PUSH``: nothing comes back on that
lane) and tells the entry point at once that it did; the entry point then asks the cloud on its own
lane for the step's reply (``lm_ring_await``), and the cloud writes it there as soon as it is
sampled. Three crossings on the token's path instead of four; the edge's word and the entry point's
question travel while the cloud computes. exo runs its decode as a ring the same way.

:class:`RingBoard` is where the two meet on the last tier: the pushed step's reply
(:meth:`RingBoard.deliver`, on the lane thread that computed it) and the entry point's question
(:meth:`RingBoard.collect`, on the entry point's lane thread), whichever comes first. The reply is
written on the entry point's lane by the thread that has it, so the token waits for no other thread
to wake. A ring is named by an unguessable key the entry point draws per step and belongs to the
node that drew it: another node asking for it gets an error, never the token.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from tierflow.errors import InvalidInputError, TierUnavailableError
from tierflow.transport.dataplane import failure_for
from tierflow.transport.lane import CALL_TIMEOUT_S, ReplySender
from tierflow.transport.messages import PeerInfo, StageRequest, StageResponse

OP_LM_RING_AWAIT = "lm_ring_await"
RING_KEY = "ring"  # step meta: the ring's key (the entry point's await names it too)
RING_TO_KEY = "ring_to"  # step meta: the node the ring's reply is for (its certificate's name)
RING_PUSHED_KEY = "ring_pushed"  # reply meta: the step went on as a push, its token comes on the ring
RING_RT_KEY = "ring_rt_s"  # reply meta: the entry point's round trip to the first hop, on a ring
# how long a question waits for its reply before it is answered with an error: longer than a lane
# call's timeout, so that the entry point has given up first (and sent the step again without a ring)
WAIT_S = 2 * CALL_TIMEOUT_S
KEEP_S = 60.0  # how long a reply nobody asked for is kept (its entry point gave up or went away)
MAX_KEPT = 1024


def new_ring_key() -> str:
    return secrets.token_hex(16)


@dataclass
class _Slot:
    reply_to: str  # who may collect the reply (a certificate's name)
    created: float = field(default_factory=time.monotonic)
    response: StageResponse | None = None  # delivered before anybody asked
    send: ReplySender | None = None  # asked before it was delivered: writes on the asker's lane
    sent: threading.Event = field(default_factory=threading.Event)


class RingBoard:
    """Replies of pushed steps meeting the entry points' questions for them (see the module docstring)."""

    def __init__(self, *, wait_s: float = WAIT_S, keep_s: float = KEEP_S) -> None:
        self.wait_s = wait_s
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def deliver(self, request: StageRequest, response: StageResponse) -> None:
        """A pushed step's ``response``: written to its asker if one waits, else kept for it."""
        key, reply_to = str(request.meta.get(RING_KEY, "")), str(request.meta.get(RING_TO_KEY, ""))
        if not key:
            return  # not a ring step: nobody will ask
        with self._lock:
            self._prune()
            slot = self._slots.get(key)
            if slot is None or slot.send is None:
                self._slots[key] = _Slot(reply_to, response=response)
                return
            del self._slots[key]
        if slot.reply_to != reply_to:  # the asker is not the node the step is for
            response = _refused(key)
        slot.send(response)  # a lane that is gone cannot be written: its caller has given up already
        slot.sent.set()

    def collect(self, request: StageRequest, peer: PeerInfo, send: ReplySender) -> StageResponse | None:
        """The reply to ``request`` (``lm_ring_await``) from ``peer``: returned when it is here already,
        else written with ``send`` when it comes (None returned), or an error after ``wait_s``."""
        key = str(request.meta.get(RING_KEY, ""))
        if not key:
            raise InvalidInputError(f"{OP_LM_RING_AWAIT} names no ring")
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and slot.send is not None:
                raise InvalidInputError(f"ring {key[:8]}... is awaited already")
            if slot is not None:
                del self._slots[key]
                return slot.response if slot.reply_to == peer.name else _refused(key)
            slot = self._slots[key] = _Slot(peer.name, send=send)
        if slot.sent.wait(self.wait_s):
            return None
        with self._lock:
            if self._slots.get(key) is slot:
                del self._slots[key]
                raise TierUnavailableError(
                    f"the reply of ring {key[:8]}... did not come within {self.wait_s:g} s"
                )
        slot.sent.wait()  # delivered as the wait ran out: the deliverer is writing it
        return None

    def _prune(self) -> None:
        """Drop replies kept past ``keep_s`` (and the oldest beyond MAX_KEPT); questions stay."""
        now = time.monotonic()
        kept = [k for k, s in self._slots.items() if s.send is None]
        for k in kept:
            if now - self._slots[k].created > self.keep_s:
                del self._slots[k]
        kept = [k for k in kept if k in self._slots]
        for k in kept[: max(len(kept) - MAX_KEPT + 1, 0)]:
            del self._slots[k]


def _refused(key: str) -> StageResponse:
    return failure_for(0, InvalidInputError(f"ring {key[:8]}... belongs to another node"))
