"""The secure data plane on real sockets: mutual TLS, the handshake, sealed requests, bad input.

Servers and clients run on ephemeral loopback ports; one test starts the server as a separate
process. Each bad-input case sends a deliberately broken message on a live stream and checks the
typed rejection, its metrics reason, and that the stream still serves the next request.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from tierflow.bench.dataplane import EchoServerProcess, echo_handler, measure_loopback_overhead
from tierflow.errors import InvalidInputError, TransportError
from tierflow.transport import envelope as env
from tierflow.transport.certs import init_pki, issue_node_cert
from tierflow.transport.dataplane import (
    DataPlaneClient,
    DataPlaneServer,
    SealedRequest,
    SyncDataPlaneClient,
)
from tierflow.transport.dataplane_metrics import DataPlaneMetrics
from tierflow.transport.envelope import Kind
from tierflow.transport.linkemu import LinkEmulator
from tierflow.transport.messages import ErrorCode, PeerInfo, StageRequest, StageResponse
from tierflow.transport.session import MessageRejected, Session, pack_header_frame
from tierflow.transport.stream import StreamClosed, read_message, write_message
from tierflow.transport.tls import Identity, client_ssl_context, load_identity, server_ssl_context
from tierflow.wire import ChannelConfig, KeyShare, SecureChannel, SessionKeys, new_session_id

T = TypeVar("T")
TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, ["device", "edge", "cloud"], days=2)
    return directory


@pytest.fixture(scope="module")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another CA, with the same node names."""
    directory = tmp_path_factory.mktemp("rogue")
    init_pki(directory, ["device", "cloud"], days=2)
    return directory


@pytest.fixture(scope="module")
def cloud2(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """A second certificate for "cloud", signed by the real CA (a leaked or re-issued one)."""
    directory = tmp_path_factory.mktemp("cloud2")
    shutil.copy(pki / "ca.crt", directory)
    shutil.copy(pki / "ca.key", directory)
    issue_node_cert(directory, "cloud", days=2)
    return load_identity(directory, "cloud")


@asynccontextmanager
async def serving(
    identity: Identity, handler: Callable[..., Any] = echo_handler, **kwargs: Any
) -> AsyncIterator[tuple[DataPlaneServer, int]]:
    server = DataPlaneServer(identity, handler, metrics=DataPlaneMetrics(), **kwargs)
    port = await server.start("127.0.0.1:0")
    try:
        yield server, port
    finally:
        await server.stop(None)


def make_client(port: int, identity: Identity, server_name: str = "cloud", **kwargs: Any) -> DataPlaneClient:
    kwargs.setdefault("connect_timeout", 5.0)
    return DataPlaneClient(f"127.0.0.1:{port}", identity, server_name, metrics=DataPlaneMetrics(), **kwargs)


async def echo(client: DataPlaneClient, **inputs: np.ndarray) -> StageResponse:
    return await client.call(StageRequest("echo", inputs=inputs), timeout=TIMEOUT)


async def assert_still_serves(client: DataPlaneClient) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    response = await echo(client, x=x)
    assert response.ok, response.error
    np.testing.assert_array_equal(response.outputs["x"], x)


# --- round trips ------------------------------------------------------------------------------


def test_raw_round_trip_is_exact_for_every_dtype_and_layout(pki: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = {
        "f32": rng.standard_normal((2, 3, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "f64": rng.standard_normal((4, 4)),
        "ids": rng.integers(0, 50_000, (1, 9)),
        "i32": rng.integers(-5, 5, 6).astype(np.int32),
        "u8": rng.integers(0, 255, 10).astype(np.uint8),
        "mask": rng.random(8) > 0.5,
        "scalar": np.float32(3.5),
        "empty": np.zeros((0, 4), np.float32),
        "transposed": rng.standard_normal((3, 4)).astype(np.float32).T,
        "big_endian": np.arange(5, dtype=">i4"),
        "large": rng.standard_normal((300, 1024)).astype(np.float32),  # > inline limit: its own frame
    }

    async def go() -> None:
        async with (
            serving(load_identity(pki, "cloud")) as (server, port),
            make_client(port, load_identity(pki, "device")) as client,
        ):
            assert client.peer_name == "cloud"
            response = await client.call(
                StageRequest(
                    "echo", model="m", inputs=inputs, meta={"step": 3, "t": 0.5, "s": "x", "b": True}
                )
            )
            assert response.ok, response.error
            assert response.meta["peer"] == "device"
            assert {k: response.meta[k] for k in ("step", "t", "s", "b")} == {
                "step": 3,
                "t": 0.5,
                "s": "x",
                "b": True,
            }
            assert set(response.outputs) == set(inputs)
            for name, x in inputs.items():
                got = response.outputs[name]
                assert got.shape == np.shape(x), name
                assert got.dtype == np.asarray(x).dtype.newbyteorder("="), name
                np.testing.assert_array_equal(got, x, err_msg=name)

    run(go())


def test_quantized_transfer_stays_within_half_a_step_and_keeps_integers_exact(pki: Path) -> None:
    rng = np.random.default_rng(1)
    h = rng.standard_normal((4, 64)).astype(np.float32)
    ids = np.arange(10, dtype=np.int64)

    async def go() -> None:
        async with (
            serving(load_identity(pki, "cloud")) as (_, port),
            make_client(port, load_identity(pki, "device")) as client,
        ):
            for quant, tol in (
                ("int8", np.abs(h).max() / 127),
                ("fp16", 1e-3),
                ("int8_channel", np.abs(h).max() / 127),
            ):
                response = await client.call(StageRequest("echo", inputs={"h": h, "ids": ids}, quant=quant))
                assert response.ok and response.quant == quant
                assert np.abs(response.outputs["h"] - h).max() <= tol, quant
                assert not np.array_equal(response.outputs["h"], h), quant  # it really was quantized
                np.testing.assert_array_equal(response.outputs["ids"], ids)
            exact_back = await client.call(
                StageRequest("echo", inputs={"h": h}, quant="int8", response_quant="raw")
            )
            assert exact_back.quant == "raw"

    run(go())


def test_requests_pipeline_on_one_stream_and_answer_out_of_order(pki: Path) -> None:
    async def go() -> None:
        gate, waiting_arrived = asyncio.Event(), asyncio.Event()
        finished: list[str] = []

        async def handler(request: StageRequest, peer: PeerInfo) -> StageResponse:
            if request.op == "wait":
                waiting_arrived.set()
                await asyncio.wait_for(gate.wait(), 5)  # only a second request in flight can open the gate
            elif request.op == "open":
                gate.set()
            else:
                await asyncio.sleep(float(request.meta["delay"]))
            finished.append(request.op)
            return StageResponse(
                request.request_id, outputs=request.inputs, meta={"session": peer.session_id}
            )

        async with (
            serving(load_identity(pki, "cloud"), handler) as (_, port),
            make_client(port, load_identity(pki, "device")) as client,
        ):
            waiting = asyncio.create_task(client.call(StageRequest("wait"), timeout=TIMEOUT))
            await asyncio.wait_for(waiting_arrived.wait(), TIMEOUT)  # it is at the server, holding the gate
            opened = await client.call(StageRequest("open"), timeout=TIMEOUT)
            assert opened.ok and (await waiting).ok
            assert finished == ["open", "wait"]
            rng = np.random.default_rng(2)
            calls = [
                client.call(
                    StageRequest(
                        "sleep", inputs={"i": np.array([i])}, meta={"delay": float(rng.uniform(0, 0.02))}
                    ),
                    timeout=TIMEOUT,
                )
                for i in range(40)
            ]
            responses = await asyncio.gather(*calls)
            assert [int(r.outputs["i"][0]) for r in responses] == list(range(40))
            assert len({r.meta["session"] for r in responses}) == 1

    run(go())


def test_handler_errors_come_back_typed(pki: Path) -> None:
    async def handler(request: StageRequest, peer: PeerInfo) -> Any:
        if request.op == "crash":
            raise RuntimeError("boom")
        if request.op == "junk":
            return {"not": "a response"}
        if request.op == "unsendable":
            return StageResponse(request.request_id, outputs={"o": np.array([object()])})
        return await echo_handler(request, peer)

    async def go() -> None:
        async with serving(load_identity(pki, "cloud"), handler) as (server, port):
            async with make_client(port, load_identity(pki, "device")) as client:
                cases = {
                    "fail": ErrorCode.INVALID_INPUT,
                    "nope": ErrorCode.UNKNOWN_OP,
                    "crash": ErrorCode.INTERNAL,
                    "junk": ErrorCode.INTERNAL,
                    "unsendable": ErrorCode.INTERNAL,
                }
                for op, code in cases.items():
                    response = await client.call(
                        StageRequest(op, meta={"message": "bad prompt"}), timeout=TIMEOUT
                    )
                    assert response.error is not None and response.error.code == code, (op, response.error)
                failed = await client.call(StageRequest("fail", meta={"message": "bad prompt"}))
                with pytest.raises(InvalidInputError, match="bad prompt"):
                    failed.raise_for_error()
                missing = await client.call(StageRequest("echo", inputs={"a": np.ones(1)}, outputs=["b"]))
                assert missing.error is not None and missing.error.code == ErrorCode.INVALID_INPUT
                await assert_still_serves(client)
            served = server.metrics.registry.get_sample_value(
                "tierflow_dataplane_requests_total",
                {"side": "server", "peer": "device", "outcome": "internal"},
            )
            assert served == 3

    run(go())


def test_client_refuses_unsendable_requests_locally(pki: Path) -> None:
    async def go() -> None:
        async with (
            serving(load_identity(pki, "cloud")) as (_, port),
            make_client(port, load_identity(pki, "device")) as client,
        ):
            bad = [
                StageRequest("echo", inputs={"x": [1, 2, 3]}),  # type: ignore[dict-item]
                StageRequest("echo", inputs={"x": np.array(["a"])}),
                StageRequest("echo", inputs={"x": np.ones(2)}, quant="int4"),  # type: ignore[arg-type]
                StageRequest("echo", meta={"x": [1]}),  # type: ignore[dict-item]
                StageRequest("echo", meta={"x": float("nan")}),
                StageRequest(""),
            ]
            for request in bad:
                with pytest.raises(InvalidInputError):
                    await client.call(request)
            await assert_still_serves(client)

    run(go())


def test_metrics_count_bytes_requests_and_latency_per_peer(pki: Path) -> None:
    async def go() -> None:
        async with serving(load_identity(pki, "cloud")) as (server, port):
            client = make_client(port, load_identity(pki, "edge"))
            async with client:
                for _ in range(5):
                    await echo(client, x=np.ones(1000, np.float32))
            reg = server.metrics.registry
            sent = reg.get_sample_value("tierflow_dataplane_bytes_sent_total", {"peer": "edge"})
            received = reg.get_sample_value("tierflow_dataplane_bytes_received_total", {"peer": "edge"})
            assert sent is not None and sent > 5 * 4000 and received is not None and received > 5 * 4000
            ok = reg.get_sample_value(
                "tierflow_dataplane_requests_total", {"side": "server", "peer": "edge", "outcome": "ok"}
            )
            assert ok == 5
            assert reg.get_sample_value("tierflow_dataplane_request_seconds_count", {"side": "server"}) == 5
            client_sent = client.metrics.registry.get_sample_value(
                "tierflow_dataplane_bytes_sent_total", {"peer": "cloud"}
            )
            assert client_sent == received
            text = generate_latest(reg).decode()
            assert 'tierflow_dataplane_bytes_sent_total{peer="edge"}' in text
            assert "tierflow_dataplane_frames_rejected" in text

    run(go())


# --- bad input on a live stream ----------------------------------------------------------------


def _with_parts(data: bytes, change: Callable[[list[bytes]], None], request_id: int | None = None) -> bytes:
    msg = env.decode(data)
    parts = list(msg.parts)
    change(parts)
    return env.encode(msg.kind, msg.request_id if request_id is None else request_id, parts)


def _flip(blob: bytes, index: int) -> bytes:
    b = bytearray(blob)
    b[index] ^= 0x40
    return bytes(b)


def _set(parts: list[bytes], i: int, value: bytes) -> None:
    parts[i] = value


def forge(
    session: Session,
    request_id: int,
    specs: list[list[Any]],
    inline: list[np.ndarray],
    framed: list[np.ndarray],
    header_json: bytes | None = None,
) -> bytes:
    """A request sealed under the real session keys, with whatever header the test wants.

    ``specs`` rows are [name, dtype, shape, "i", offset] or [name, dtype, shape, "f", k]; k is
    replaced by the sequence number the k-th framed tensor gets.
    """
    first = session.channel.next_seq + 1
    rows = [row[:4] + [row[4] + first if row[3] == "f" else row[4]] for row in specs]
    body = {
        "op": "echo",
        "model": "",
        "out": [],
        "meta": {},
        "rq": "raw",
        "rid": request_id,
        "dir": "request",
    }
    body["tensors"] = rows
    text = header_json if header_json is not None else json.dumps(body).encode()
    parts = [session.channel.seal(pack_header_frame(text, inline), mode="raw")]
    parts += [session.channel.seal(a, mode="raw") for a in framed]
    return env.encode(Kind.REQUEST, request_id, parts)


X = np.arange(6, dtype=np.float32).reshape(2, 3)


def _sealed(client: DataPlaneClient, quant: str = "raw", **inputs: np.ndarray) -> SealedRequest:
    return client.seal(StageRequest("echo", inputs=inputs or {"x": X}, quant=quant))  # type: ignore[arg-type]


async def _case_tampered_header(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c)
    return _with_parts(s.data, lambda p: _set(p, 0, _flip(p[0], len(p[0]) - 20))), s.request_id


async def _case_tampered_tensor(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c, quant="int8")  # quantized tensors get their own frame
    return _with_parts(s.data, lambda p: _set(p, 1, _flip(p[1], len(p[1]) - 3))), s.request_id


async def _case_tampered_frame_header(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c, quant="int8")
    return _with_parts(s.data, lambda p: _set(p, 1, _flip(p[1], 19))), s.request_id  # top byte of the seq


async def _case_request_id_rewritten(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c)  # answered under the id in the authenticated header, not the rewritten one
    return _with_parts(s.data, lambda p: None, request_id=s.request_id + 1000), s.request_id


async def _case_truncated_message(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c)
    return s.data[:-7], s.request_id


async def _case_truncated_frame(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c, quant="int8")
    return _with_parts(s.data, lambda p: _set(p, 1, p[1][:-5])), s.request_id


async def _case_replayed(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c)
    assert (await c.call_sealed(s, TIMEOUT)).ok
    return s.data, s.request_id


async def _case_stale(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c)  # sealed now, sent after more than a window's worth of later frames
    for _ in range(REPLAY_WINDOW + 2):
        await assert_still_serves(c)
    return s.data, s.request_id


async def _case_other_session(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = other.seal(StageRequest("echo", inputs={"x": X}))
    return s.data, s.request_id


async def _case_wrong_key(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    keys = SessionKeys(c.session.session_id, send_key=bytes(32), recv_key=bytes(32))
    impostor = Session(SecureChannel(keys), "cloud", bytes(32))
    impostor.channel._send_seq = c.session.channel.next_seq  # noqa: SLF001 -- a plausible sequence number
    rid = 555_001
    return forge(impostor, rid, [["x", "<f4", [2, 3], "i", 0]], [X], []), rid


async def _case_wrong_shape_framed(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    rid = 555_002
    return forge(c.session, rid, [["x", "<f4", [3, 2], "f", 0]], [], [X]), rid


async def _case_wrong_dtype_framed(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    rid = 555_003
    return forge(c.session, rid, [["x", "<f8", [2, 3], "f", 0]], [], [X]), rid


async def _case_wrong_shape_inline(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    rid = 555_004
    return forge(c.session, rid, [["x", "<f4", [4, 3], "i", 0]], [X], []), rid


async def _case_swapped_frames(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    big = {"a": np.zeros((128, 160), np.float32), "b": np.ones((128, 160), np.float32)}  # 80 KiB each: framed
    s = _sealed(c, **big)

    def swap(p: list[bytes]) -> None:
        p[1], p[2] = p[2], p[1]

    return _with_parts(s.data, swap), s.request_id


async def _case_bad_header_json(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    rid = 555_005
    return forge(c.session, rid, [], [], [], header_json=b"{not json"), rid


async def _case_wrong_kind(c: DataPlaneClient, other: DataPlaneClient) -> tuple[bytes, int]:
    s = _sealed(c)
    msg = env.decode(s.data)
    return env.encode(Kind.RESPONSE, msg.request_id, list(msg.parts)), s.request_id


REPLAY_WINDOW = 8
BAD_INPUT_CASES = {
    "tampered_header": (_case_tampered_header, "tampered"),
    "tampered_tensor": (_case_tampered_tensor, "tampered"),
    "tampered_frame_header": (_case_tampered_frame_header, "tampered"),
    "request_id_rewritten": (_case_request_id_rewritten, "tampered"),
    "truncated_message": (_case_truncated_message, "truncated"),
    "truncated_frame": (_case_truncated_frame, "truncated"),
    "replayed": (_case_replayed, "replayed"),
    "reordered_beyond_window": (_case_stale, "stale"),
    "frame_of_another_session": (_case_other_session, "wrong_key"),
    "wrong_key": (_case_wrong_key, "tampered"),
    "wrong_shape_framed": (_case_wrong_shape_framed, "shape"),
    "wrong_dtype_framed": (_case_wrong_dtype_framed, "shape"),
    "wrong_shape_inline": (_case_wrong_shape_inline, "shape"),
    "swapped_frames": (_case_swapped_frames, "misplaced"),
    "bad_header_json": (_case_bad_header_json, "bad_header"),
    "wrong_kind": (_case_wrong_kind, "unexpected"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT_CASES))
def test_bad_message_gets_a_typed_rejection_and_the_stream_lives_on(pki: Path, case: str) -> None:
    build, reason = BAD_INPUT_CASES[case]

    async def go() -> None:
        config = ChannelConfig(replay_window=REPLAY_WINDOW)
        async with (
            serving(load_identity(pki, "cloud"), channel_config=config) as (server, port),
            make_client(port, load_identity(pki, "device"), channel_config=config) as client,
            make_client(port, load_identity(pki, "edge"), channel_config=config) as other,
        ):
            await assert_still_serves(client)
            data, rid = await build(client, other)
            before = server.metrics.rejected_count("server", reason)
            response = await client.call_sealed(SealedRequest(rid, data), TIMEOUT)
            assert response.request_id == rid
            assert response.error is not None, "an altered message was accepted"
            assert (response.error.code, response.error.reason) == (ErrorCode.FRAME_REJECTED, reason), (
                response.error
            )
            assert server.metrics.rejected_count("server", reason) == before + 1
            await assert_still_serves(client)  # the same stream goes on
            await assert_still_serves(other)  # and so does the other session

    run(go())


@pytest.mark.parametrize(
    ("junk", "reason"),
    [(b"\x01\x03", "truncated"), (b"\x07" + bytes(40), "version"), (b"\x01\x09" + bytes(10), "malformed")],
)
def test_messages_without_a_readable_request_id_are_dropped_and_counted(
    pki: Path, junk: bytes, reason: str
) -> None:
    async def go() -> None:
        async with (
            serving(load_identity(pki, "cloud")) as (server, port),
            make_client(port, load_identity(pki, "device")) as client,
        ):
            await client.send_raw(junk)
            for _ in range(200):
                if server.metrics.rejected_count("server", reason) == 1:
                    break
                await asyncio.sleep(0.01)
            assert server.metrics.rejected_count("server", reason) == 1
            await assert_still_serves(client)

    run(go())


# --- the decoder, fuzzed (no gRPC) -------------------------------------------------------------


def _session_pair() -> tuple[Session, Session]:
    a, b, sid = KeyShare(), KeyShare(), new_session_id()
    fa, fb = bytes(range(32)), bytes(range(1, 33))
    ka = a.agree(b.public, session_id=sid, local_fingerprint=fa, peer_fingerprint=fb)
    kb = b.agree(a.public, session_id=sid, local_fingerprint=fb, peer_fingerprint=fa)
    return Session(SecureChannel(ka), "b", fb), Session(SecureChannel(kb), "a", fa)


FUZZ_SENDER, FUZZ_RECEIVER = _session_pair()
FUZZ_INPUTS = {
    "x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "ids": np.arange(3),
    "q": np.ones((2, 8), np.float32),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_altered_message_is_rejected_and_nothing_crashes_the_decoder(data: st.DataObject) -> None:
    # int8: the float tensors get frames of their own, the ids ride inline in the header frame
    sealed = FUZZ_SENDER.seal(Kind.REQUEST, 7, {"op": "echo"}, FUZZ_INPUTS, "int8")
    # positions are drawn independently of the message (its length varies with the sequence numbers)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "random"]))
    position = data.draw(st.integers(0, 1 << 20))
    if kind == "flip":
        i = position % len(sealed)
        altered = sealed[:i] + bytes([sealed[i] ^ data.draw(st.integers(1, 255))]) + sealed[i + 1 :]
    elif kind == "truncate":
        altered = sealed[: position % len(sealed)]
    elif kind == "extend":
        altered = sealed + data.draw(st.binary(min_size=1, max_size=16))
    else:
        altered = data.draw(st.binary(max_size=400))
    with pytest.raises(MessageRejected) as info:
        FUZZ_RECEIVER.open(altered, Kind.REQUEST)
    assert info.value.reason


def test_unaltered_fuzz_message_opens() -> None:
    sender, receiver = _session_pair()
    sealed = sender.seal(Kind.REQUEST, 7, {"op": "echo"}, FUZZ_INPUTS, "int8")
    opened = receiver.open(sealed, Kind.REQUEST)
    assert opened.request_id == 7 and set(opened.tensors) == set(FUZZ_INPUTS)
    np.testing.assert_array_equal(opened.tensors["ids"], FUZZ_INPUTS["ids"])


# --- who may connect ----------------------------------------------------------------------------


def test_a_client_without_a_certificate_from_our_ca_cannot_connect(pki: Path, rogue_pki: Path) -> None:
    async def go() -> None:
        async with serving(load_identity(pki, "cloud")) as (server, port):
            with pytest.raises(TransportError, match="cannot reach|handshake"):
                await make_client(port, load_identity(rogue_pki, "device")).connect()
            # no client certificate at all: TLS itself fails, before any data-plane message
            anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            anonymous.load_verify_locations(cadata=load_identity(pki, "cloud").ca_pem.decode())
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=anonymous, server_hostname="cloud"
            )
            with pytest.raises((ssl.SSLError, ConnectionError, StreamClosed)):
                write_message(writer, b"\x01\x01" + bytes(10))
                await writer.drain()
                await asyncio.wait_for(read_message(reader, 1 << 16), 5)
            writer.close()
            assert server.sessions == 0
            async with make_client(port, load_identity(pki, "device")) as good:
                await assert_still_serves(good)

    run(go())


def test_a_server_from_another_ca_or_with_another_name_is_refused(pki: Path, rogue_pki: Path) -> None:
    async def go() -> None:
        async with serving(load_identity(rogue_pki, "cloud")) as (_, port):
            with pytest.raises(TransportError):
                await make_client(port, load_identity(pki, "device")).connect()
        async with serving(load_identity(pki, "cloud")) as (_, port):
            with pytest.raises(TransportError):
                await make_client(port, load_identity(pki, "device"), server_name="edge").connect()

    run(go())


def test_a_relay_with_another_ca_signed_certificate_cannot_splice(pki: Path, cloud2: Identity) -> None:
    """A relay holding a valid "cloud" certificate forwards every message unchanged: the server
    signs the client fingerprint it saw (the relay's), and the client refuses the session."""

    async def go() -> None:
        async with serving(load_identity(pki, "cloud")) as (real, port):
            async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_ssl_context(cloud2), server_hostname="cloud"
                )

                async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                    try:
                        while True:
                            write_message(dst, await read_message(src, 1 << 20))
                            await dst.drain()
                    except (StreamClosed, ConnectionError, ssl.SSLError):
                        dst.close()

                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

            mitm = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=server_ssl_context(cloud2))
            mitm_port = mitm.sockets[0].getsockname()[1]
            try:
                with pytest.raises(TransportError, match="did not see our certificate"):
                    await make_client(mitm_port, load_identity(pki, "device")).connect()
                assert real.metrics.handshakes.labels(side="server", outcome="ok")._value.get() == 1
            finally:
                mitm.close()

    run(go())


def test_a_pinned_certificate_refuses_an_impostor_with_the_same_name(pki: Path, cloud2: Identity) -> None:
    real_cert = (pki / "cloud.crt").read_bytes()

    async def go() -> None:
        async with serving(cloud2) as (_, port):
            await make_client(port, load_identity(pki, "device")).close()  # unpinned: CA + name are enough
            with pytest.raises(TransportError, match="pinned"):
                await make_client(port, load_identity(pki, "device"), pinned_cert=real_cert).connect()
        async with (
            serving(load_identity(pki, "cloud")) as (_, port),
            make_client(port, load_identity(pki, "device"), pinned_cert=real_cert) as client,
        ):
            await assert_still_serves(client)

    run(go())


# --- lifecycle, proxies, processes, threads ---------------------------------------------------


def test_server_stop_fails_pending_calls_and_the_client_reconnects(pki: Path) -> None:
    arrived = asyncio.Event()

    async def slow(request: StageRequest, peer: PeerInfo) -> StageResponse:
        if request.op == "slow":
            arrived.set()
            await asyncio.Event().wait()  # never answers: only the server's stop ends it
        return await echo_handler(request, peer)

    async def go() -> None:
        server = DataPlaneServer(load_identity(pki, "cloud"), slow, metrics=DataPlaneMetrics())
        port = await server.start("127.0.0.1:0")
        client = make_client(port, load_identity(pki, "device"))
        await client.connect()
        pending = asyncio.create_task(client.call(StageRequest("slow"), timeout=TIMEOUT))
        await asyncio.wait_for(arrived.wait(), TIMEOUT)  # the server is working on it
        await server.stop(0)
        with pytest.raises(TransportError):
            await pending
        assert not client.connected
        with pytest.raises(TransportError, match="down"):
            await echo(client, x=X)
        server = DataPlaneServer(load_identity(pki, "cloud"), slow, metrics=DataPlaneMetrics())
        await server.start(f"127.0.0.1:{port}")
        await client.connect()
        await assert_still_serves(client)
        await client.close()
        await server.stop(None)

    run(go())


def test_works_through_the_link_emulator_with_the_real_server_name(pki: Path) -> None:
    x = np.random.default_rng(3).standard_normal((64, 1024)).astype(np.float32)  # 256 KiB

    async def go() -> None:
        async with (
            serving(load_identity(pki, "cloud")) as (_, port),
            LinkEmulator(("127.0.0.1", port), "wifi") as link,
        ):
            target = f"127.0.0.1:{link.port}"
            client = DataPlaneClient(
                target, load_identity(pki, "device"), "cloud", metrics=DataPlaneMetrics()
            )
            async with client:
                loop = asyncio.get_running_loop()
                start = loop.time()
                response = await client.call(StageRequest("echo", inputs={"x": x}), timeout=30)
                elapsed = loop.time() - start
                np.testing.assert_array_equal(response.outputs["x"], x)
            stats = link.stats()
            assert stats.up.bytes > x.nbytes and stats.down.bytes > x.nbytes
            assert elapsed >= link.profile.rtt_s  # it really crossed the emulated link

    run(go())


def test_server_in_a_separate_process_over_mtls(pki: Path, rogue_pki: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 32)).astype(np.float32)
    with EchoServerProcess(pki) as proc:
        target = f"127.0.0.1:{proc.port}"
        with SyncDataPlaneClient(
            target, load_identity(pki, "device"), "cloud", metrics=DataPlaneMetrics()
        ) as client:
            response = client.call(
                StageRequest("echo", inputs={"x": x, "ids": np.arange(4)}, meta={"k": 1}), TIMEOUT
            )
            assert response.ok, response.error
            np.testing.assert_array_equal(response.outputs["x"], x)
            assert response.meta["peer"] == "device" and response.meta["k"] == 1
            quantized = client.call(StageRequest("echo", inputs={"x": x}, quant="int8"), TIMEOUT)
            assert np.abs(quantized.outputs["x"] - x).max() <= np.abs(x).max() / 127
        rogue = SyncDataPlaneClient(target, load_identity(rogue_pki, "device"), "cloud", connect_timeout=5.0)
        try:
            with pytest.raises(TransportError):
                rogue.connect()
        finally:
            rogue.close()
        assert proc.proc.poll() is None  # the refused peer did not hurt the server


def test_sync_client_is_shared_by_threads(pki: Path) -> None:
    async def serve_until(stop: threading.Event, started: threading.Event, ports: list[int]) -> None:
        async with serving(load_identity(pki, "cloud")) as (_, port):
            ports.append(port)
            started.set()
            await asyncio.to_thread(stop.wait)

    stop, started, ports = threading.Event(), threading.Event(), []
    server_thread = threading.Thread(target=lambda: asyncio.run(serve_until(stop, started, ports)))
    server_thread.start()
    try:
        assert started.wait(30), "the server thread did not start"
        with SyncDataPlaneClient(f"127.0.0.1:{ports[0]}", load_identity(pki, "edge"), "cloud") as client:
            errors: list[BaseException] = []

            def worker(k: int) -> None:
                try:
                    for i in range(15):
                        x = np.full((4,), k * 100 + i, np.int64)
                        out = client.call(StageRequest("echo", inputs={"x": x}), TIMEOUT).outputs["x"]
                        np.testing.assert_array_equal(out, x)
                except BaseException as exc:  # noqa: BLE001 -- reported below
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
    finally:
        stop.set()
        server_thread.join(10)


def test_loopback_benchmark_reports_its_figures() -> None:
    result = measure_loopback_overhead(n=50, payload_bytes=1024)
    assert result["n"] >= 50 and result["payload_bytes"] == 1024
    for key in ("loopback_rtt_ms", "tcp_rtt_ms", "tls_rtt_ms", "lane_rtt_ms", "sync_rtt_ms"):
        assert result[key] > 0, key
    assert result["loopback_rtt_p90_ms"] >= result["loopback_rtt_ms"]
    assert result["loopback_rtt_overhead_ms"] == pytest.approx(
        result["loopback_rtt_ms"] - result["tcp_rtt_ms"], abs=1e-3
    )
    with pytest.raises(InvalidInputError):
        measure_loopback_overhead(n=0)


def test_close_delivers_replies_already_in_flight(pki: Path) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request: StageRequest, peer: PeerInfo) -> StageResponse:
        arrived.set()
        await release.wait()
        return await echo_handler(request, peer)

    async def go() -> None:
        async with serving(load_identity(pki, "cloud"), held) as (_, port):
            client = make_client(port, load_identity(pki, "device"))
            await client.connect()
            pending = asyncio.create_task(echo(client, x=X))
            await asyncio.wait_for(arrived.wait(), TIMEOUT)  # the request is at the server
            # one loop: the handler answers only once close() has started (it awaits before the reply)
            release.set()
            await client.close()
            response = await pending
            assert response.ok
            np.testing.assert_array_equal(response.outputs["x"], X)
            with pytest.raises(TransportError):
                await echo(client, x=X)

    run(go())
