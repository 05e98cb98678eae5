"""A node's ring subscriptions (engine/ring.py): a relayed step's reply goes to the subscription it
names, with its key and what the first hop carried; a first hop's own reply goes back; nothing is
written to a subscription that is gone."""

from __future__ import annotations

import threading

import pytest

from tierflow.engine.ring import (
    CARRIED_PREFIX,
    OP_LM_RING_SUBSCRIBE,
    RING_KEY,
    RING_PUSHED_KEY,
    RING_RELAYED_KEY,
    RING_TO_KEY,
    RingBoard,
)
from tierflow.errors import InvalidInputError
from tierflow.transport.messages import PeerInfo, StageRequest, StageResponse

ENTRY = PeerInfo("device", b"\x01" * 32, "127.0.0.1:1", 1)


class FakeLane:
    """A held lane: records replies; 'closes' when the test says so."""

    def __init__(self, writable: bool = True) -> None:
        self.replies: list[tuple[int, StageResponse]] = []
        self.answered = threading.Event()
        self.closed = threading.Event()
        self.writable = writable

    def reply(self, request_id: int, response: StageResponse) -> bool:
        self.replies.append((request_id, response))
        self.answered.set()
        return self.writable

    def wait_closed(self) -> None:
        assert self.closed.wait(10)


def subscribe(board: RingBoard, sub: str, lane: FakeLane) -> threading.Thread:
    request = StageRequest(OP_LM_RING_SUBSCRIBE, meta={RING_TO_KEY: sub})
    request.request_id = 41
    thread = threading.Thread(target=board.subscribe, args=(request, ENTRY, lane))  # held: own thread
    thread.start()
    assert lane.answered.wait(10)  # answered at once, then held
    return thread


def relayed(sub: str, key: str = "k1", **extra: object) -> StageRequest:
    meta = {RING_KEY: key, RING_TO_KEY: sub, RING_RELAYED_KEY: 1, "context": "c", **extra}
    return StageRequest("lm_step", meta=meta)  # type: ignore[arg-type]


def test_a_relayed_steps_reply_goes_to_its_subscription_with_its_key_and_what_was_carried() -> None:
    board, lane = RingBoard(), FakeLane()
    thread = subscribe(board, "s1", lane)
    assert lane.replies[0][0] == 41 and lane.replies[0][1].meta == {RING_TO_KEY: "s1"}
    step = relayed("s1", **{f"{CARRIED_PREFIX}compute_s.edge": 0.002})
    assert board.take(step, StageResponse(7, meta={"token": 5, "compute_s.cloud": 0.003}))
    request_id, reply = lane.replies[1]
    assert request_id == 41  # written as replies to the subscription's request
    assert reply.meta == {"token": 5, "compute_s.cloud": 0.003, "compute_s.edge": 0.002, RING_KEY: "k1"}
    lane.closed.set()
    thread.join(10)
    assert len(board) == 0


def test_a_first_hops_own_reply_goes_back_and_a_pushed_on_one_is_not_written_at_all() -> None:
    board, lane = RingBoard(), FakeLane()
    thread = subscribe(board, "s1", lane)
    own = StageRequest("lm_step", meta={RING_KEY: "k", RING_TO_KEY: "s1", "context": "c"})
    assert board.take(own, StageResponse(0, meta={"token": 1})) is False  # written back on its lane
    assert board.take(own, StageResponse(0, meta={RING_PUSHED_KEY: 1})) is True  # nothing to write
    assert len(lane.replies) == 1  # the subscription's answer only
    lane.closed.set()
    thread.join(10)


def test_a_reply_for_a_subscription_that_is_gone_is_dropped() -> None:
    board, lane = RingBoard(), FakeLane()
    thread = subscribe(board, "s1", lane)
    lane.closed.set()
    thread.join(10)
    assert board.take(relayed("s1"), StageResponse(0, meta={"token": 1})) is True
    assert board.take(relayed("never"), StageResponse(0, meta={"token": 1})) is True
    assert len(lane.replies) == 1


def test_a_subscription_names_itself_once_and_one_that_cannot_be_answered_is_not_kept() -> None:
    board = RingBoard()
    with pytest.raises(InvalidInputError, match="names no subscription"):
        board.subscribe(StageRequest(OP_LM_RING_SUBSCRIBE), ENTRY, FakeLane())  # type: ignore[arg-type]
    lane = FakeLane()
    thread = subscribe(board, "s1", lane)
    again = StageRequest(OP_LM_RING_SUBSCRIBE, meta={RING_TO_KEY: "s1"})
    with pytest.raises(InvalidInputError, match="exists already"):
        board.subscribe(again, ENTRY, FakeLane())  # type: ignore[arg-type]
    lane.closed.set()
    thread.join(10)
    gone = FakeLane(writable=False)  # the peer went away before its answer was written
    other = StageRequest(OP_LM_RING_SUBSCRIBE, meta={RING_TO_KEY: "s2"})
    board.subscribe(other, ENTRY, gone)  # type: ignore[arg-type]
    assert len(board) == 0 and not gone.closed.is_set()
