"""The decode lane (transport/lane.py) on real sockets: sealed messages over blocking mutual TLS.

A lane carries the data plane's messages in a compact form, so the same promises are checked: only
peers of our CA get in, a tampered or replayed message is never handed to the handler (the lane
closes instead), errors come back typed, a busy or hung lane never blocks a caller for ever, and a
lane is only opened to a peer reached directly (never around an emulated link).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tierflow.errors import InvalidInputError, KVMissingError, TierUnavailableError, TransportError
from tierflow.transport import codec
from tierflow.transport import lane as lane_module
from tierflow.transport.certs import init_pki
from tierflow.transport.envelope import Kind
from tierflow.transport.lane import (
    DATA_PLANE_PORT_KEY,
    LANE_PORT_KEY,
    LaneClient,
    Lanes,
    LaneServer,
    lane_target,
    open_lane,
    seal_lane,
)
from tierflow.transport.messages import ORIGIN_KEY, ErrorCode, PeerInfo, StageRequest, StageResponse
from tierflow.transport.session import MessageRejected, Session
from tierflow.transport.stream import (
    StreamClosed,
    recv_message,
    send_message,
    sleep_until_readable,
    wait_readable,
)
from tierflow.transport.tls import load_identity
from tierflow.wire import SecureChannel, SessionKeys


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, ["device", "edge"], days=2)
    return directory


class Recorder:
    """A lane handler: echoes ``x`` doubled, or raises what a request's ``raise`` meta names."""

    def __init__(self) -> None:
        self.seen: list[tuple[StageRequest, PeerInfo]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, request: StageRequest, peer: PeerInfo) -> StageResponse:
        self.seen.append((request, peer))
        self.release.wait(10)
        if request.meta.get("raise") == "kv":
            raise KVMissingError("no KV here", tier="edge")
        if request.meta.get("raise") == "relayed":
            raise TierUnavailableError("the cloud is gone", tier="cloud")
        if request.meta.get("raise") == "unsendable":
            return StageResponse(request.request_id, meta={"nested": {"not": "allowed"}})  # type: ignore[dict-item]
        outputs = {k: v * 2 for k, v in request.inputs.items()}
        return StageResponse(request.request_id, outputs=outputs, meta={"token": 7, "seen": len(self.seen)})


@pytest.fixture
def lane(pki: Path) -> Iterator[tuple[LaneServer, LaneClient, Recorder]]:
    handler = Recorder()
    server = LaneServer(load_identity(pki, "edge"), handler)
    port = server.start("127.0.0.1")
    client = LaneClient(f"127.0.0.1:{port}", load_identity(pki, "device"), "edge", call_timeout=2.0)
    client.connect()
    yield server, client, handler
    handler.release.set()
    client.close()
    server.stop()


def step(**meta: object) -> StageRequest:
    x = np.arange(512, dtype=np.float32).reshape(1, 1, 512)
    ids = np.array([[42]], np.int64)
    return StageRequest("lm_step", inputs={"input_ids": ids, "hidden": x}, meta={"context": "c1", **meta})


def test_a_call_carries_tensors_and_meta_exactly_and_names_the_peer(lane: tuple) -> None:
    _, client, handler = lane
    reply = client.try_call(step(past_len=3))
    assert reply is not None and reply.error is None
    doubled = np.arange(512, dtype=np.float32).reshape(1, 1, 512) * 2
    np.testing.assert_array_equal(reply.outputs["hidden"], doubled)
    assert reply.outputs["input_ids"].dtype == np.int64 and int(reply.outputs["input_ids"][0, 0]) == 84
    assert reply.meta["token"] == 7
    request, peer = handler.seen[0]
    assert request.meta == {"context": "c1", "past_len": 3} and peer.name == "device"
    # calls go on in order on the one connection
    assert [client.try_call(step()).meta["seen"] for _ in range(3)] == [2, 3, 4]  # type: ignore[union-attr]


def test_a_client_of_another_ca_is_refused(lane: tuple, tmp_path: Path) -> None:
    server, _, handler = lane
    init_pki(tmp_path / "rogue", ["device", "edge"], days=2)
    rogue = LaneClient(f"127.0.0.1:{server.port}", load_identity(tmp_path / "rogue", "device"), "edge")
    with pytest.raises(TransportError):
        rogue.connect()
    assert handler.seen == []


def _sealed(client: LaneClient, request: StageRequest, request_id: int) -> bytes:
    header, _ = codec.request_header(request)
    assert client._session is not None
    return seal_lane(client._session, Kind.REQUEST, request_id, header, request.inputs)


def test_a_tampered_message_never_reaches_the_handler_and_the_lane_closes(lane: tuple) -> None:
    _, client, handler = lane
    data = bytearray(_sealed(client, step(), 1))
    data[-20] ^= 0x01  # inside the ciphertext
    assert client._tls is not None
    send_message(client._tls, bytes(data))
    with pytest.raises(StreamClosed):
        recv_message(client._tls, 1 << 20)
    assert handler.seen == []


def test_a_replayed_message_is_answered_once(lane: tuple) -> None:
    _, client, handler = lane
    data = _sealed(client, step(), 1)
    assert client._tls is not None
    send_message(client._tls, data)
    recv_message(client._tls, 1 << 20)  # the first one is answered
    send_message(client._tls, data)
    with pytest.raises(StreamClosed):
        recv_message(client._tls, 1 << 20)
    assert len(handler.seen) == 1


def test_errors_come_back_typed_and_a_relayed_one_names_the_tier_at_fault(lane: tuple, pki: Path) -> None:
    _, client, _ = lane
    lanes = Lanes(load_identity(pki, "device"), {}, origin="device-1")
    with pytest.raises(KVMissingError):
        lanes.call("edge", client, step(**{"raise": "kv"}))
    with pytest.raises(TierUnavailableError) as lost:
        lanes.call("edge", client, step(**{"raise": "relayed"}))
    assert lost.value.tier == "cloud"
    # the error did not break the lane, and the origin was stamped as on the data plane
    reply = lanes.call("edge", client, step())
    assert reply is not None and reply.meta["token"] == 7


def test_an_unsendable_reply_comes_back_as_an_internal_error_and_the_lane_goes_on(lane: tuple) -> None:
    _, client, _ = lane
    reply = client.try_call(step(**{"raise": "unsendable"}))
    assert reply is not None and reply.error is not None and reply.error.code == ErrorCode.INTERNAL
    assert "unsendable" in reply.error.message
    assert client.try_call(step()).meta["token"] == 7  # type: ignore[union-attr]


def test_the_origin_is_stamped_only_where_none_is_named(lane: tuple, pki: Path) -> None:
    _, client, handler = lane
    lanes = Lanes(load_identity(pki, "device"), {}, origin="device-1")
    lanes.call("edge", client, step())
    lanes.call("edge", client, step(**{ORIGIN_KEY: "car-7"}))
    assert [r.meta[ORIGIN_KEY] for r, _ in handler.seen] == ["device-1", "car-7"]


def test_a_busy_lane_sends_nothing_and_says_so(lane: tuple) -> None:
    _, client, handler = lane
    with client._busy:  # another caller holds it
        assert client.try_call(step()) is None
    assert handler.seen == []


def test_a_hung_peer_is_given_up_after_the_call_timeout(lane: tuple, pki: Path) -> None:
    _, client, handler = lane
    handler.release.clear()  # the handler waits: the peer hangs
    lanes = Lanes(load_identity(pki, "device"), {})
    lanes._clients["edge"] = client
    assert lanes.call("edge", client, step()) is None  # the caller takes the data plane instead
    assert lanes.get("edge") is None  # dropped
    with pytest.raises(TransportError):
        client.try_call(step())


def test_once_calls_are_fast_a_hung_peer_is_given_up_on_long_before_the_first_timeout(pki: Path) -> None:
    handler = Recorder()
    server = LaneServer(load_identity(pki, "edge"), handler)
    port = server.start("127.0.0.1")
    client = LaneClient(f"127.0.0.1:{port}", load_identity(pki, "device"), "edge", call_timeout=60.0)
    client.connect()
    try:
        for _ in range(5):
            assert client.try_call(step()) is not None  # milliseconds each
        handler.release.clear()  # now the peer hangs
        started = time.monotonic()
        with pytest.raises(TransportError):
            client.try_call(step())
        assert time.monotonic() - started < 30.0  # the minimum (2 s), not the first call's 60 s
    finally:
        handler.release.set()
        client.close()
        server.stop()


@pytest.mark.parametrize(
    ("address", "info", "target"),
    [
        ("127.0.0.1:5000", {LANE_PORT_KEY: 6000, DATA_PLANE_PORT_KEY: 5000}, "127.0.0.1:6000"),
        ("[::1]:5000", {LANE_PORT_KEY: 6000, DATA_PLANE_PORT_KEY: 5000}, "[::1]:6000"),
        # a link emulator listens on 7000 and relays to the node's 5000: the lane would go around it
        ("127.0.0.1:7000", {LANE_PORT_KEY: 6000, DATA_PLANE_PORT_KEY: 5000}, None),
        ("127.0.0.1:5000", {DATA_PLANE_PORT_KEY: 5000}, None),  # a node with lanes switched off
        ("127.0.0.1:5000", {}, None),
    ],
)
def test_a_lane_is_opened_only_to_a_peer_reached_directly(
    address: str, info: dict[str, int], target: str | None
) -> None:
    assert lane_target(address, info) == target  # type: ignore[arg-type]


# --- the lane message format: authentic messages that are not well formed ---------------------------


def _sessions() -> tuple[Session, Session]:
    sid = os.urandom(16)
    a_to_b, b_to_a = os.urandom(32), os.urandom(32)
    a = Session(SecureChannel(SessionKeys(sid, a_to_b, b_to_a)), "b", bytes(32))
    b = Session(SecureChannel(SessionKeys(sid, b_to_a, a_to_b)), "a", bytes(32))
    return a, b


def _tensor_spec(code: int, rank: int, name: bytes, dims: tuple[int, ...]) -> bytes:
    spec = struct.pack("<BBH", code, rank, len(name)) + struct.pack(f"<{len(dims)}I", *dims) + name
    return spec + bytes(-len(spec) % 8)


def _message(kind: int, header: bytes, count: int, tail: bytes = b"") -> bytes:
    head = struct.pack("<BQHI", kind, 5, count, len(header)) + header
    return head + bytes(-len(head) % 8) + tail


def test_a_lane_message_round_trips_exactly() -> None:
    a, b = _sessions()
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    ids = np.array([[1, 2]], np.int64)
    sealed = seal_lane(a, Kind.REQUEST, 9, {"op": "lm_step"}, {"hidden": x, "input_ids": ids})
    opened = open_lane(b, sealed, Kind.REQUEST)
    assert (opened.request_id, opened.header) == (9, {"op": "lm_step"})
    assert opened.tensors["hidden"].dtype == np.float32 and np.array_equal(opened.tensors["hidden"], x)
    assert np.array_equal(opened.tensors["input_ids"], ids)


F32 = 1  # frame.py's dtype code of float32


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00" * 5, "malformed"),  # shorter than the head
        (_message(int(Kind.RESPONSE), b"{}", 0), "unexpected"),  # a reply where a request belongs
        (struct.pack("<BQHI", int(Kind.REQUEST), 5, 0, 4000) + b"{}", "bad_header"),  # header past the end
        (_message(int(Kind.REQUEST), b"{not json", 0), "bad_header"),
        (_message(int(Kind.REQUEST), b"[1, 2]", 0), "bad_header"),  # JSON, not an object
        (_message(int(Kind.REQUEST), b"{}", 1), "shape"),  # a tensor announced, none there
        (_message(int(Kind.REQUEST), b"{}", 1, _tensor_spec(250, 1, b"x", (1,)) + bytes(8)), "bad_header"),
        (_message(int(Kind.REQUEST), b"{}", 1, _tensor_spec(F32, 33, b"x", (1,) * 33)), "bad_header"),  # rank
        (_message(int(Kind.REQUEST), b"{}", 1, _tensor_spec(F32, 1, b"", (1,)) + bytes(8)), "bad_header"),
        # the same name twice
        (_message(int(Kind.REQUEST), b"{}", 2, (_tensor_spec(F32, 1, b"x", (2,)) + bytes(8)) * 2), "bad_header"),  # noqa: E501
        (_message(int(Kind.REQUEST), b"{}", 1, _tensor_spec(F32, 1, b"x", (100,)) + bytes(8)), "shape"),
        (_message(int(Kind.REQUEST), b"{}", 0, bytes(8)), "shape"),  # bytes after the last tensor
    ],
)
def test_a_malformed_lane_message_is_rejected_with_its_reason(body: bytes, reason: str) -> None:
    a, b = _sessions()
    with pytest.raises(MessageRejected) as caught:
        open_lane(b, a.channel.seal_bytes(body), Kind.REQUEST)
    assert caught.value.reason == reason


def test_a_tensor_over_the_rank_limit_is_refused_before_sending() -> None:
    a, _ = _sessions()
    with pytest.raises(InvalidInputError, match="rank 33"):
        seal_lane(a, Kind.REQUEST, 1, {}, {"x": np.zeros((1,) * 33, np.float32)})


# --- polling for the next message -----------------------------------------------------------------


def test_wait_readable_sees_data_and_gives_up_after_its_limit() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert wait_readable(a, 0.01) is False  # nothing came: it gave up
        b.sendall(b"x")
        assert wait_readable(a, 10.0) is True  # returns as soon as there is data, not after 10 s


def test_sleep_until_readable_returns_when_data_comes_and_gives_up_after_its_limit() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert sleep_until_readable(a, 0.01) is False
        b.sendall(b"x")
        assert sleep_until_readable(a, 10.0) is True


class WaitLog:
    """Stands in for the two ways a lane waits, recording each (``arrives``: the message comes
    while the lane sleeps)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, arrives: bool = False) -> None:
        self.calls: list[tuple[str, float]] = []
        monkeypatch.setattr(lane_module, "sleep_until_readable", self.sleep)
        monkeypatch.setattr(lane_module, "wait_readable", self.poll)
        self.arrives = arrives

    def sleep(self, _sock: socket.socket, limit_s: float) -> bool:
        self.calls.append(("sleep", limit_s))
        return self.arrives

    def poll(self, _sock: socket.socket, limit_s: float) -> bool:
        self.calls.append(("poll", limit_s))
        return False


@pytest.mark.parametrize(
    ("typical_s", "poll_s", "waits"),
    [
        (None, 0.005, []),  # no wait seen yet: a plain blocking read
        (0.002, 0.005, [("poll", 0.005)]),  # waits are short: poll at once
        # a long wait: sleep until half the limit before the message is due, then poll for the limit
        (0.02, 0.005, [("sleep", pytest.approx(0.0175)), ("poll", 0.005)]),
        (0.002, 0.0, []),  # switched off
        (0.02, 0.0, []),
    ],
)
def test_a_lane_polls_around_when_its_next_message_is_due(
    monkeypatch: pytest.MonkeyPatch, typical_s: float | None, poll_s: float, waits: list
) -> None:
    log = WaitLog(monkeypatch)
    lane_module._await_message(socket.socket(), typical_s, poll_s)
    assert log.calls == waits


def test_a_message_that_comes_while_the_lane_sleeps_is_read_without_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = WaitLog(monkeypatch, arrives=True)
    lane_module._await_message(socket.socket(), 0.05, 0.005)
    assert [kind for kind, _ in log.calls] == ["sleep"]


def test_one_pause_between_generations_does_not_stop_a_lane_polling_at_once() -> None:
    poll_s = 0.005
    typical = None
    for _ in range(10):
        typical = lane_module._fold_wait(typical, 0.002, poll_s)
    after_pause = lane_module._fold_wait(typical, 30.0, poll_s)
    assert after_pause <= poll_s  # still a short wait: the next message is polled for at once
    # a lane whose first wait was a pause does not expect seconds for its next message either
    assert lane_module._fold_wait(None, 30.0, poll_s) <= 2 * poll_s


class SlowRecorder(Recorder):
    """A handler whose work takes longer than the lanes' polling limit (a large model's span)."""

    def __call__(self, request: StageRequest, peer: PeerInfo) -> StageResponse:
        time.sleep(0.01)  # the work itself, not a synchronisation
        return super().__call__(request, peer)


@pytest.mark.parametrize(
    ("handler", "poll_s"),
    [
        (Recorder(), 1.0),  # a long limit: every wait polls at once
        (SlowRecorder(), 0.002),  # replies take longer than the limit: the caller sleeps, then polls
    ],
    ids=["polling", "sleeping-then-polling"],
)
def test_calls_over_a_polling_lane_carry_every_reply_in_order(
    pki: Path, handler: Recorder, poll_s: float
) -> None:
    server = LaneServer(load_identity(pki, "edge"), handler, poll_s=poll_s)
    port = server.start("127.0.0.1")
    client = LaneClient(f"127.0.0.1:{port}", load_identity(pki, "device"), "edge", poll_s=poll_s)
    client.connect()
    try:
        seen = [client.try_call(step()).meta["seen"] for _ in range(20)]  # type: ignore[union-attr]
        assert seen == list(range(1, 21))
    finally:
        client.close()
        server.stop()


def test_polling_switched_off_reaches_every_open_lane_and_back_on_restores_the_limit(
    lane: tuple, pki: Path
) -> None:
    _, client, _ = lane
    lanes = Lanes(load_identity(pki, "device"), {}, poll_s=0.004)
    lanes._clients["edge"] = client  # as if opened (opening needs a node's info reply)
    client.poll_s = lanes.poll_s
    lanes.set_polling(False)
    assert client.poll_s == 0.0 and lanes.poll_s == 0.0  # and lanes opened from now on get 0
    assert client.try_call(step()) is not None  # a lane that does not poll still carries calls
    lanes.set_polling(True)
    assert client.poll_s == 0.004 and lanes.poll_s == 0.004
