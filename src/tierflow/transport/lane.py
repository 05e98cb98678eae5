"""The decode lane: the data plane's messages between two tiers over blocking sockets, one thread each.

A decode step crosses every hop twice (the request with one hidden state, the reply with the token),
and on an event loop each crossing pays for tasks, futures, stream buffers and a wake-up of the loop
on top of the message itself. The lane carries the same sealed messages (:mod:`codec`, one
:class:`~tierflow.transport.session.Session` per connection, agreed by the same handshake bound to
both TLS certificates) over a plain blocking TLS socket: the server answers each connection from its
own thread, the handler runs right there (a layer span's compute releases the GIL), and a client's
call is a write and a read. This is how llama.cpp's RPC backend moves its tensors (blocking sockets
from C++); tierflow's frames stay sealed.

The lane complements the data plane, it does not replace it: a node listens on both, announces its
lane's port in its ``info`` reply, and a tier uses a lane to a peer only when it reaches that peer
directly (a link emulator in between would be bypassed; docs/ARCHITECTURE.md). A lane serves one
call at a time; a caller that finds it busy uses the data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from tierflow.errors import InvalidInputError, KeyAgreementError, TierflowError, TransportError
from tierflow.transport import codec
from tierflow.transport.dataplane import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    HANDSHAKE_MAX_BYTES,
    failure_for,
)
from tierflow.transport.envelope import MAX_REQUEST_ID, Kind
from tierflow.transport.messages import (
    ORIGIN_KEY,
    ErrorCode,
    MetaValue,
    PeerInfo,
    StageRequest,
    StageResponse,
)
from tierflow.transport.peers import Peers
from tierflow.transport.session import (
    MAX_RANK,
    MessageRejected,
    OpenedMessage,
    Session,
    alert,
    client_finish,
    client_hello,
    server_accept,
)
from tierflow.transport.stream import (
    keepalive,
    recv_message,
    send_message,
    sleep_until_readable,
    split_address,
    wait_readable,
)
from tierflow.transport.tls import Identity, client_ssl_context, server_ssl_context
from tierflow.wire import ChannelConfig
from tierflow.wire import frame as fr

LaneHandler = Callable[[StageRequest, PeerInfo], StageResponse]
LANE_PORT_KEY = "lane_port"  # a node's ``info`` reply: where its lane listens
DATA_PLANE_PORT_KEY = "data_plane_port"  # ... and its data plane, to tell a direct path from a relayed one
# A lane call blocks its caller (an entry point's event loop, for a lone step), so a peer that hangs is
# given up on: after CALL_TIMEOUT_S at first, then after TIMEOUT_OVER_TYPICAL times the calls' moving
# average (at least MIN_CALL_TIMEOUT_S). Giving up costs little: the step goes over the data plane.
CALL_TIMEOUT_S = 30.0
MIN_CALL_TIMEOUT_S = 2.0
TIMEOUT_OVER_TYPICAL = 20.0
REOPEN_AFTER_S = 5.0  # a peer without a lane (none announced, a relay in between, down) is asked again
# A lane waits for its next message busily (polling its socket, giving up the CPU between looks) for
# up to its limit (DEFAULT_POLL_S unless set), as llama.cpp's threadpool polls for work: a sleeping
# reader wakes late, on a core that went idle meanwhile, and a step computed right after an idle gap
# runs slower (a span's step after a 2 ms sleep took ~35 % longer on this VM). When the lane's typical
# wait is that short it polls at once; a longer one (a large model's span computing elsewhere) it
# sleeps through in the kernel until half the limit before the message is due, then polls for up to
# the limit: hybrid polling, as Linux's block layer polls for an I/O completion after sleeping for
# part of its expected time. So a lane burns at most its limit of CPU per message, whatever the wait.
DEFAULT_POLL_S = 0.005
_log = logging.getLogger(__name__)


def _typical(previous: float | None, seconds: float) -> float:
    """A moving average of a lane's waits (or calls), folding in ``seconds``."""
    return seconds if previous is None else 0.8 * previous + 0.2 * seconds


def _await_message(sock: socket.socket, typical_s: float | None, poll_s: float) -> None:
    """Wait for ``sock``'s next message as DEFAULT_POLL_S says, given this lane's typical wait and
    polling limit; returns when it is readable or the polling is over (a blocking read follows)."""
    if poll_s <= 0 or typical_s is None:
        return
    if typical_s > poll_s and sleep_until_readable(sock, typical_s - poll_s / 2):
        return  # it came before it was due
    wait_readable(sock, poll_s)


def _fold_wait(typical_s: float | None, seconds: float, poll_s: float) -> float:
    """A server lane's typical wait for the next request, folding in one of ``seconds``. A long pause
    (between generations) counts as twice the typical wait (at least twice the polling limit): one
    pause must not stop the polling for the steps after it, a run of them does."""
    return _typical(typical_s, min(seconds, 2 * max(typical_s or 0.0, poll_s)))


def _nodelay(sock: socket.socket) -> None:
    """Small messages go out at once; an idle lane to a peer that vanished is noticed (keepalive)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keepalive(sock)


class LaneServer:
    """Answers lane connections from peers whose certificates our CA signed, a thread per connection.

    ``handler`` runs on the connection's thread; ``on_sent`` (if given) after each reply is written.
    """

    def __init__(
        self,
        identity: Identity,
        handler: LaneHandler,
        *,
        on_sent: Callable[[], object] | None = None,
        channel_config: ChannelConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.identity = identity
        self.handler = handler
        self.poll_s = poll_s
        self.on_sent = on_sent
        self.channel_config = channel_config or ChannelConfig()
        self.max_message_bytes = max_message_bytes
        self._ssl = server_ssl_context(identity)
        self._listener: socket.socket | None = None
        self._connections: set[ssl.SSLSocket] = set()
        self._lock = threading.Lock()
        self._stream_ids = itertools.count(1)
        self.port: int | None = None

    def start(self, host: str) -> int:
        """Listen on ``host`` (any free port); return the port."""
        listener = socket.create_server((host, 0))
        self._listener, self.port = listener, int(listener.getsockname()[1])
        threading.Thread(target=self._accept_loop, args=(listener,), name="lane-accept", daemon=True).start()
        return self.port

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(sock,), name="lane", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        _nodelay(sock)
        sock.settimeout(DEFAULT_CONNECT_TIMEOUT_S)
        tls: ssl.SSLSocket | None = None
        try:
            tls = self._ssl.wrap_socket(sock, server_side=True)  # takes over the socket
            with self._lock:
                self._connections.add(tls)
            accepted = self._handshake(tls)
            if accepted is not None:
                tls.settimeout(None)
                self._answer(tls, *accepted)
        except (OSError, TransportError, ValueError):
            pass  # the peer went away, or never finished its handshakes
        finally:
            with self._lock:
                if tls is not None:
                    self._connections.discard(tls)
            (tls or sock).close()

    def _handshake(self, tls: ssl.SSLSocket) -> tuple[Session, PeerInfo] | None:
        der = tls.getpeercert(binary_form=True)
        if not der:  # cannot happen with CERT_REQUIRED, but never serve an anonymous peer
            return None
        hello = recv_message(tls, HANDSHAKE_MAX_BYTES)
        try:
            session, ack = server_accept(
                hello, self.identity, ssl.DER_cert_to_PEM_cert(der).encode(), self.channel_config
            )
        except (KeyAgreementError, TierflowError) as exc:
            send_message(tls, alert("handshake", str(exc)))
            return None
        send_message(tls, ack)
        host, port, *_ = tls.getpeername()
        return session, PeerInfo(
            session.peer_name, session.peer_fingerprint, f"{host}:{port}", next(self._stream_ids)
        )

    def _answer(self, tls: ssl.SSLSocket, session: Session, peer: PeerInfo) -> None:
        waited: float | None = None  # typical time from a reply to the next request
        while True:
            idle_since = time.perf_counter()
            _await_message(tls, waited, self.poll_s)
            data = recv_message(tls, self.max_message_bytes)
            waited = _fold_wait(waited, time.perf_counter() - idle_since, self.poll_s)
            try:
                request = codec.request_from(open_lane(session, data, Kind.REQUEST))
            except MessageRejected as exc:
                # a lane answers in order: a message it cannot open ends it (the peer's next call fails
                # and goes over the data plane, which answers each rejected message)
                _log.warning("lane from %s closed on a rejected message: %s", peer.name, exc)
                return
            response = self._run(request, peer)
            try:
                header, _ = codec.response_header(response)
                outputs = response.outputs if response.error is None else {}
                reply = seal_lane(session, Kind.RESPONSE, response.request_id, header, outputs)
            except (TierflowError, TypeError, ValueError) as exc:  # the handler returned something unsendable
                failure = StageResponse.failure(
                    request.request_id, ErrorCode.INTERNAL, f"unsendable response: {exc}"
                )
                reply = seal_lane(
                    session, Kind.RESPONSE, request.request_id, codec.response_header(failure)[0], {}
                )
            send_message(tls, reply)
            if self.on_sent is not None:
                self.on_sent()

    def _run(self, request: StageRequest, peer: PeerInfo) -> StageResponse:
        try:
            response = self.handler(request, peer)
        except TierflowError as exc:
            response = failure_for(request.request_id, exc)
        except Exception as exc:
            _log.exception("lane handler failed on %s", request.op)
            response = StageResponse.failure(
                request.request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"
            )
        response.request_id = request.request_id
        return response


class LaneClient:
    """One lane to a peer: a blocking mutual-TLS connection, one call at a time (:meth:`try_call`)."""

    def __init__(
        self,
        target: str,
        identity: Identity,
        server_name: str,
        *,
        channel_config: ChannelConfig | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        call_timeout: float = CALL_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.target = target
        self.poll_s = poll_s
        self.call_timeout = call_timeout
        self.identity = identity
        self.server_name = server_name
        self.channel_config = channel_config or ChannelConfig()
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self._ssl = client_ssl_context(identity)
        self._tls: ssl.SSLSocket | None = None
        self._session: Session | None = None
        self._busy = threading.Lock()
        self._ids = itertools.count(1)
        self._typical_s: float | None = None  # moving average of the calls' durations
        self.broken: str | None = None

    def connect(self) -> None:
        """Open the connection and agree the session; raises TransportError."""
        host, port = split_address(self.target)
        share, hello = client_hello()
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
            _nodelay(sock)
            tls = self._ssl.wrap_socket(sock, server_hostname=str(self.server_name))
            send_message(tls, hello)
            ack = recv_message(tls, HANDSHAKE_MAX_BYTES)
        except OSError as exc:
            raise TransportError(f"lane to {self.server_name} at {self.target}: {exc}") from None
        try:
            self._session = client_finish(
                share, hello, ack, self.identity, self.server_name, self.channel_config
            )
        except TransportError:
            tls.close()
            raise
        tls.settimeout(self.call_timeout)  # a peer that hangs is given up on, not waited on for ever
        self._tls = tls

    def try_call(self, request: StageRequest) -> StageResponse | None:
        """Send ``request`` and wait for its reply; None (nothing sent) when another call holds the lane.

        Raises TransportError when the lane breaks (it stays broken) and InvalidInputError for a
        request that cannot be sealed.
        """
        if not self._busy.acquire(blocking=False):
            return None
        try:
            return self._call(request)
        finally:
            self._busy.release()

    def _call(self, request: StageRequest) -> StageResponse:
        tls, session = self._tls, self._session
        if tls is None or session is None or self.broken is not None:
            raise TransportError(f"lane to {self.server_name} is down: {self.broken or 'not connected'}")
        request.request_id = next(self._ids) % (MAX_REQUEST_ID + 1)
        header, _ = codec.request_header(request)
        data = seal_lane(session, Kind.REQUEST, request.request_id, header, request.inputs)
        started = time.perf_counter()
        try:
            send_message(tls, data)
            _await_message(tls, self._typical_s, self.poll_s)
            reply = recv_message(tls, self.max_message_bytes)
        except (OSError, TransportError) as exc:
            self._break(str(exc) or type(exc).__name__)
            raise TransportError(f"lane to {self.server_name} broke: {self.broken}") from None
        try:
            response = codec.response_from(open_lane(session, reply, Kind.RESPONSE))
        except MessageRejected as exc:
            self._break(f"rejected a reply: {exc}")
            raise TransportError(f"lane to {self.server_name}: {exc}") from None
        if response.request_id != request.request_id:
            self._break(f"reply to request {response.request_id}, expected {request.request_id}")
            raise TransportError(f"lane to {self.server_name}: {self.broken}")
        self._learn(tls, time.perf_counter() - started)
        return response

    def _learn(self, tls: ssl.SSLSocket, seconds: float) -> None:
        """Fold a call's duration into the typical one and set the next calls' timeout from it."""
        typical = self._typical_s = _typical(self._typical_s, seconds)
        timeout = min(self.call_timeout, max(MIN_CALL_TIMEOUT_S, TIMEOUT_OVER_TYPICAL * typical))
        current = tls.gettimeout()
        if current is None or abs(current - timeout) > 0.1 * timeout:
            tls.settimeout(timeout)

    def _break(self, reason: str) -> None:
        self.broken = reason
        self.close()

    def close(self) -> None:
        tls, self._tls = self._tls, None
        if tls is not None:
            with contextlib.suppress(OSError):
                tls.close()


class Lanes:
    """A tier's lanes to its peers: opened in the background once a peer's ``info`` says where its
    lane listens and the tier reaches that peer directly, dropped when they break.

    ``origin`` is stamped on requests that name none, as :class:`~tierflow.engine.tier_load.OriginPeers`
    does on the data plane.
    """

    def __init__(
        self,
        identity: Identity,
        addresses: Mapping[str, str],
        origin: str | None = None,
        *,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.identity = identity
        self.addresses = dict(addresses)
        self.origin = origin
        self.poll_limit_s = poll_s  # what the lanes poll for while polling is on
        self.poll_s = poll_s
        self._clients: dict[str, LaneClient] = {}
        self._asked: dict[str, float] = {}  # peer -> when its lane was last looked for
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, peer: str) -> LaneClient | None:
        return self._clients.get(peer)

    def set_polling(self, on: bool) -> None:
        """Polling on (up to the limit the lanes were made with) or off, for every lane now and later."""
        self.poll_s = self.poll_limit_s if on else 0.0
        for client in self._clients.values():
            client.poll_s = self.poll_s

    def call(self, peer: str, lane: LaneClient, request: StageRequest) -> StageResponse | None:
        """``request`` over ``lane`` (blocking): the reply, or a tierflow error for an error reply, as a
        data-plane call gives. None when the lane is busy, or broke (it is dropped): the caller then
        sends the request over the data plane, which tells a peer that is gone from a lane that is.
        (A step is safe to send again: ``past_len`` cuts back whatever KV a first attempt added.)"""
        if self.origin is not None and ORIGIN_KEY not in request.meta:
            request.meta[ORIGIN_KEY] = self.origin
        try:
            reply = lane.try_call(request)
        except TransportError as exc:
            if self._clients.get(peer) is lane:
                del self._clients[peer]
            _log.info("lane to %s dropped: %s", peer, exc)
            return None
        return None if reply is None else reply.raise_for_error(peer)

    def open_soon(self, peer: str, peers: Peers) -> None:
        """Look for ``peer``'s lane in the background (at most every REOPEN_AFTER_S)."""
        now = time.monotonic()
        if peer in self._clients or now - self._asked.get(peer, -REOPEN_AFTER_S) < REOPEN_AFTER_S:
            return
        self._asked[peer] = now
        task = asyncio.get_running_loop().create_task(self._open(peer, peers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, peer: str, peers: Peers) -> None:
        address = self.addresses.get(peer)
        if address is None:
            return
        try:
            info = (await peers.call(peer, StageRequest("info"))).meta
        except TierflowError:
            return  # down or busy: asked again later
        target = lane_target(address, info)
        if target is None:
            return
        client = LaneClient(target, self.identity, peer, poll_s=self.poll_s)
        try:
            await asyncio.to_thread(client.connect)
        except TransportError as exc:
            _log.info("no lane to %s: %s", peer, exc)
            return
        self._clients[peer] = client

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def lane_target(address: str, info: Mapping[str, MetaValue]) -> str | None:
    """Where to open a lane to the node at ``address`` (``host:port`` of its data plane as this tier
    reaches it), from its ``info`` reply; None when it has no lane or ``address`` is a relay (a link
    emulator: the lane would go around the emulated link)."""
    lane, data_plane = info.get(LANE_PORT_KEY), info.get(DATA_PLANE_PORT_KEY)
    if lane is None or data_plane is None:
        return None
    host, port = split_address(address)
    if port != int(data_plane):
        return None
    return f"[{host}]:{int(lane)}" if ":" in host else f"{host}:{int(lane)}"


# --- messages on a lane -------------------------------------------------------------------------
# One SecureChannel frame (a raw uint8 blob: the session's keys, sequence numbers, replay window and
# key epochs, as on the data plane) per message, holding
#   kind u8 | request id u64 | tensor count u16 | header length u32 | header JSON | pad to 8
#   per tensor: dtype code u8 | rank u8 | name length u16 | dims u32 * rank | name | pad | data | pad
# The header holds the same fields as a data-plane message's (codec.request_header/response_header)
# and is checked by the same code (codec.request_from/response_from); what the lane drops is the
# envelope, the per-tensor JSON specs and the second parse they need. Tensors travel raw.
_HEAD = struct.Struct("<BQHI")
_TENSOR = struct.Struct("<BBH")
_DIMS = [struct.Struct(f"<{rank}I") for rank in range(MAX_RANK + 1)]  # by rank: built once
_ALIGN = 8
_PADS = [bytes(n) for n in range(_ALIGN)]


def _pad(n: int) -> bytes:
    return _PADS[-n % _ALIGN]


def seal_lane(
    session: Session, kind: Kind, request_id: int, header: dict[str, Any], tensors: Mapping[str, np.ndarray]
) -> bytes:
    """One lane message: ``header`` (JSON) and raw ``tensors``, sealed as a single frame."""
    body = orjson.dumps(header)
    chunks = [_HEAD.pack(int(kind), request_id, len(tensors), len(body)), body, _pad(_HEAD.size + len(body))]
    for name, value in tensors.items():
        a = np.ascontiguousarray(value)
        if a.ndim > MAX_RANK:
            raise InvalidInputError(f"tensor {name!r} has rank {a.ndim}, above the limit of {MAX_RANK}")
        code = fr.dtype_code(a.dtype)
        raw_name = name.encode()
        spec = _TENSOR.pack(code, a.ndim, len(raw_name)) + _DIMS[a.ndim].pack(*a.shape) + raw_name
        chunks += [spec, _pad(len(spec)), a.tobytes(), _pad(a.nbytes)]
    return session.channel.seal_bytes(b"".join(chunks))


def open_lane(session: Session, data: bytes, kind: Kind) -> OpenedMessage:
    """Authenticate and parse a lane message of ``kind``; MessageRejected when it is not one."""
    blob = session.open_bytes(data)
    view = blob.data
    if len(blob) < _HEAD.size:
        raise MessageRejected("malformed", "lane message shorter than its head", None)
    got_kind, rid, count, body_len = _HEAD.unpack_from(view, 0)
    if got_kind != int(kind):
        raise MessageRejected("unexpected", f"expected a {kind.name} on the lane, got kind {got_kind}", rid)
    at = _HEAD.size + body_len
    if at > len(blob):
        raise MessageRejected("bad_header", "lane header runs past its message", rid)
    try:
        header = orjson.loads(view[_HEAD.size : at])
    except orjson.JSONDecodeError:
        raise MessageRejected("bad_header", "lane header is not valid JSON", rid) from None
    if not isinstance(header, dict):
        raise MessageRejected("bad_header", "lane header is not a JSON object", rid)
    at += -at % _ALIGN
    tensors: dict[str, np.ndarray] = {}
    for _ in range(count):
        at = _read_tensor(blob, view, at, tensors, rid)
    if at != len(blob):
        raise MessageRejected("shape", f"{len(blob) - at} bytes after the lane message's last tensor", rid)
    return OpenedMessage(rid, header, tensors)


def _read_tensor(blob: np.ndarray, view: memoryview, at: int, into: dict[str, np.ndarray], rid: int) -> int:
    """One tensor of a lane message from ``at`` in ``blob`` (``view``: its memory); where the next starts."""
    size = len(view)
    if at + _TENSOR.size > size:
        raise MessageRejected("shape", "lane tensor spec runs past its message", rid)
    code, rank, name_len = _TENSOR.unpack_from(view, at)
    dtype = fr.CODE_DTYPES.get(code)
    spec_len = _TENSOR.size + 4 * rank + name_len
    if dtype is None or rank > MAX_RANK or at + spec_len > size:
        raise MessageRejected("bad_header", "lane tensor spec is not valid", rid)
    shape = _DIMS[rank].unpack_from(view, at + _TENSOR.size)
    name = str(view[at + spec_len - name_len : at + spec_len], "utf-8", "replace")
    if not name or name in into:
        raise MessageRejected("bad_header", f"lane tensor name {name!r} is empty or repeated", rid)
    at += spec_len + (-spec_len % _ALIGN)
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    if at + nbytes > size:
        raise MessageRejected("shape", f"lane tensor {name!r} {shape} runs past its message", rid)
    into[name] = blob[at : at + nbytes].view(dtype).reshape(shape)
    return at + nbytes + (-nbytes % _ALIGN)
