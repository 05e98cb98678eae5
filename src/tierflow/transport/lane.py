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
import select
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
from tierflow.transport.stream import keepalive, recv_message, send_message, split_address
from tierflow.transport.tls import Identity, client_ssl_context, server_ssl_context
from tierflow.wire import ChannelConfig
from tierflow.wire import frame as fr

LaneHandler = Callable[[StageRequest, PeerInfo], StageResponse]
# A pushed request's (Kind.PUSH) response is offered to this: True when it took it (the response
# goes on elsewhere, or nowhere), False to have it written back on the push's own lane.
PushedHandler = Callable[[StageRequest, StageResponse], bool]
# A request that holds its lane (the handler keeps its thread; other threads may write on the lane
# through the HeldLane): returns None when it answered through the HeldLane, else the reply.
HoldHandler = Callable[[StageRequest, PeerInfo, "HeldLane"], StageResponse | None]
RING_KEY = "ring"  # meta of a ring step and of its reply: the step's key (engine/ring.py)
LANE_PORT_KEY = "lane_port"  # a node's ``info`` reply: where its lane listens
DATA_PLANE_PORT_KEY = "data_plane_port"  # ... and its data plane, to tell a direct path from a relayed one
# A lane call blocks its caller (an entry point's event loop, for a lone step), so a peer that hangs is
# given up on: after CALL_TIMEOUT_S at first, then after TIMEOUT_OVER_TYPICAL times the calls' moving
# average (at least MIN_CALL_TIMEOUT_S). Giving up costs little: the step goes over the data plane.
CALL_TIMEOUT_S = 30.0
MIN_CALL_TIMEOUT_S = 2.0
TIMEOUT_OVER_TYPICAL = 20.0
REOPEN_AFTER_S = 5.0  # a peer without a lane (none announced, a relay in between, down) is asked again
_log = logging.getLogger(__name__)


def _nodelay(sock: socket.socket) -> None:
    """Small messages go out at once; an idle lane to a peer that vanished is noticed (keepalive)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keepalive(sock)


class HeldLane:
    """The server's side of one lane connection, for writing replies on it from any thread (one
    write at a time). Its reading thread never reads while another thread may write: a TLS
    connection is not safe for a read and a write at once."""

    def __init__(self, tls: ssl.SSLSocket, session: Session) -> None:
        self._tls = tls
        self._session = session
        self._lock = threading.Lock()

    def reply(self, request_id: int, response: StageResponse) -> bool:
        """Seal and write ``response`` as the reply to ``request_id``; False when the lane is gone."""
        response.request_id = request_id
        with self._lock:
            try:
                header, _ = codec.response_header(response)
                outputs = response.outputs if response.error is None else {}
                data = seal_lane(self._session, Kind.RESPONSE, request_id, header, outputs)
            except (TierflowError, TypeError, ValueError) as exc:  # the handler returned something unsendable
                failure = StageResponse.failure(request_id, ErrorCode.INTERNAL, f"unsendable response: {exc}")
                data = seal_lane(
                    self._session, Kind.RESPONSE, request_id, codec.response_header(failure)[0], {}
                )
            try:
                send_message(self._tls, data)
            except OSError:
                return False
        return True

    def wait_closed(self) -> None:
        """Block until the peer closes the lane (or, breaking the protocol, sends on it), without
        reading: other threads may be writing on it meanwhile."""
        with contextlib.suppress(OSError, ValueError):
            select.select([self._tls], [], [])


class LaneServer:
    """Answers lane connections from peers whose certificates our CA signed, a thread per connection.

    ``handler`` runs on the connection's thread; ``on_sent`` (if given) after each reply is written
    and after each pushed request. Pushed requests (accepted only with ``on_pushed``) run the same
    handler and offer its response to ``on_pushed``, which takes it or has it written back; a request
    whose op is in ``holds`` runs that handler instead, which keeps the lane (:class:`HeldLane`).
    """

    def __init__(
        self,
        identity: Identity,
        handler: LaneHandler,
        *,
        on_sent: Callable[[], object] | None = None,
        on_pushed: PushedHandler | None = None,
        holds: Mapping[str, HoldHandler] | None = None,
        channel_config: ChannelConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.identity = identity
        self.handler = handler
        self.on_sent = on_sent
        self.on_pushed = on_pushed
        self.holds = dict(holds or {})
        self._kinds = frozenset({Kind.REQUEST, Kind.PUSH} if on_pushed is not None else {Kind.REQUEST})
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
        held = HeldLane(tls, session)
        while True:
            data = recv_message(tls, self.max_message_bytes)
            try:
                kind, opened = open_lane_of(session, data, self._kinds)
                request = codec.request_from(opened)
            except MessageRejected as exc:
                # a lane answers in order: a message it cannot open ends it (the peer's next call fails
                # and goes over the data plane, which answers each rejected message)
                _log.warning("lane from %s closed on a rejected message: %s", peer.name, exc)
                return
            holding = self.holds.get(request.op)
            if kind is Kind.PUSH:
                response = self._pushed(request, peer)
            elif holding is not None:
                response = self._run(request, holding, request, peer, held)
            else:
                response = self._run(request, self.handler, request, peer)
            if response is not None and not held.reply(request.request_id, response):
                return  # the peer is gone
            if self.on_sent is not None:
                self.on_sent()

    def _pushed(self, request: StageRequest, peer: PeerInfo) -> StageResponse | None:
        """Run a pushed request; its response when it is to be written back on the lane."""
        assert self.on_pushed is not None  # a push is only opened when there is somewhere to hand it
        response = self._run(request, self.handler, request, peer)
        assert response is not None
        try:
            taken = self.on_pushed(request, response)
        except Exception:
            _log.exception("handing on a pushed %s failed", request.op)
            taken = False  # written back: the pusher hears of it at least
        return None if taken else response

    @staticmethod
    def _run(
        request: StageRequest, handle: Callable[..., StageResponse | None], *args: Any
    ) -> StageResponse | None:
        """``handle(*args)``, with a raised error as the typed failure the data plane would send."""
        try:
            response = handle(*args)
        except TierflowError as exc:
            response = failure_for(request.request_id, exc)
        except Exception as exc:
            _log.exception("lane handler failed on %s", request.op)
            response = StageResponse.failure(
                request.request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"
            )
        if response is not None:
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
    ) -> None:
        self.target = target
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
        self.held_by: StageRequest | None = None  # the request that holds this lane at its peer, if any

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

    def try_push(self, request: StageRequest) -> bool:
        """Send ``request`` as a push: it is answered elsewhere, nothing comes back on this lane.

        False (nothing sent) when another call holds the lane; raises as :meth:`try_call` does.
        """
        if not self._busy.acquire(blocking=False):
            return False
        try:
            self._send(Kind.PUSH, request)
            return True
        finally:
            self._busy.release()

    def _send(self, kind: Kind, request: StageRequest) -> ssl.SSLSocket:
        """Seal and write ``request`` as a message of ``kind``; the socket it went on."""
        tls, session = self._tls, self._session
        if tls is None or session is None or self.broken is not None:
            raise TransportError(f"lane to {self.server_name} is down: {self.broken or 'not connected'}")
        request.request_id = next(self._ids) % (MAX_REQUEST_ID + 1)
        header, _ = codec.request_header(request)
        data = seal_lane(session, kind, request.request_id, header, request.inputs)
        try:
            send_message(tls, data)
        except OSError as exc:
            raise self._broke(exc) from None
        return tls

    def _broke(self, exc: Exception) -> TransportError:
        self._break(str(exc) or type(exc).__name__)
        return TransportError(f"lane to {self.server_name} broke: {self.broken}")

    def _call(self, request: StageRequest) -> StageResponse:
        started = time.perf_counter()
        tls = self._send(Kind.REQUEST, request)
        response = self._receive(tls, request.request_id)
        self._learn(tls, time.perf_counter() - started)
        return response

    def _receive(self, tls: ssl.SSLSocket, request_id: int | None) -> StageResponse:
        """Read and open the next reply (to ``request_id``, when given); the lane breaks on anything else."""
        session = self._session
        assert session is not None
        try:
            reply = recv_message(tls, self.max_message_bytes)
        except (OSError, TransportError) as exc:
            raise self._broke(exc) from None
        try:
            response = codec.response_from(open_lane(session, reply, Kind.RESPONSE))
        except MessageRejected as exc:
            self._break(f"rejected a reply: {exc}")
            raise TransportError(f"lane to {self.server_name}: {exc}") from None
        if request_id is not None and response.request_id != request_id:
            self._break(f"reply to request {response.request_id}, expected {request_id}")
            raise TransportError(f"lane to {self.server_name}: {self.broken}")
        return response

    def _learn(self, tls: ssl.SSLSocket, seconds: float) -> None:
        """Fold a call's duration into the typical one and set the next calls' timeout from it."""
        typical = seconds if self._typical_s is None else 0.8 * self._typical_s + 0.2 * seconds
        self._typical_s = typical
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


def ring_exchange(
    first: LaneClient, held: LaneClient, request: StageRequest
) -> tuple[StageResponse, bool] | None:
    """Push ``request``, a ring step (its meta names its ``RING_KEY``), on ``first`` and wait for its
    reply on either lane: back on ``first`` (its first hop answered it itself: an error, or it could
    not push the step on) or on ``held``, the lane this tier's ring subscription holds at the route's
    last holder (engine/ring.py). The reply and whether it came on ``held``; None (nothing sent) when
    a lane is busy. Raises TransportError when a lane breaks or nothing comes within ``first``'s call
    timeout; both lanes are closed then, so that a late reply is never read as a later step's."""
    with contextlib.ExitStack() as holding:
        for lane in (first, held):
            if not lane._busy.acquire(blocking=False):
                return None
            holding.callback(lane._busy.release)
        try:
            return _exchange(first, held, request)
        except TransportError as exc:
            for lane in (first, held):
                if lane.broken is None:
                    lane._break(f"a ring step failed: {exc}")
            raise


def _exchange(first: LaneClient, held: LaneClient, request: StageRequest) -> tuple[StageResponse, bool]:
    started = time.perf_counter()
    tls = first._send(Kind.PUSH, request)
    ring = held._tls
    if ring is None or held.broken is not None:
        raise TransportError(f"ring lane to {held.server_name} is down: {held.broken or 'not connected'}")
    timeout = tls.gettimeout() or first.call_timeout
    ready = [t for t in (tls, ring) if t.pending()] or select.select([tls, ring], [], [], timeout)[0]
    if not ready:
        raise TransportError(f"no reply to a ring step within {timeout:.1f} s")
    if tls in ready:
        response, on_ring = first._receive(tls, request.request_id), False
    else:
        response, on_ring = held._receive(ring, None), True
        if response.meta.get(RING_KEY) != request.meta.get(RING_KEY):
            raise TransportError(f"ring lane to {held.server_name} brought another step's reply")
    first._learn(tls, time.perf_counter() - started)
    return response, on_ring


class Lanes:
    """A tier's lanes to its peers: opened in the background once a peer's ``info`` says where its
    lane listens and the tier reaches that peer directly, dropped when they break.

    ``origin`` is stamped on requests that name none, as :class:`~tierflow.engine.tier_load.OriginPeers`
    does on the data plane.
    """

    def __init__(self, identity: Identity, addresses: Mapping[str, str], origin: str | None = None) -> None:
        self.identity = identity
        self.addresses = dict(addresses)
        self.origin = origin
        self._clients: dict[str, LaneClient] = {}
        self._held: dict[str, LaneClient] = {}  # peer -> a lane a request of this tier holds there
        self._asked: dict[str, float] = {}  # peer (or "held:" + peer) -> when its lane was last looked for
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, peer: str) -> LaneClient | None:
        return self._clients.get(peer)

    def call(self, peer: str, lane: LaneClient, request: StageRequest) -> StageResponse | None:
        """``request`` over ``lane`` (blocking): the reply, or a tierflow error for an error reply, as a
        data-plane call gives. None when the lane is busy, or broke (it is dropped): the caller then
        sends the request over the data plane, which tells a peer that is gone from a lane that is.
        (A step is safe to send again: ``past_len`` cuts back whatever KV a first attempt added.)"""
        self._stamp(request)
        try:
            reply = lane.try_call(request)
        except TransportError as exc:
            self._drop(peer, lane, exc)
            return None
        return None if reply is None else reply.raise_for_error(peer)

    def held(self, peer: str) -> LaneClient | None:
        """The lane this tier's holding request keeps at ``peer`` (:meth:`hold_soon`), if open."""
        return self._held.get(peer)

    def ring_call(
        self, peer: str, lane: LaneClient, last: str, request: StageRequest
    ) -> StageResponse | None:
        """``request``, a ring step, pushed to ``peer`` over ``lane``; its reply from there or over
        the lane held at ``last`` (:func:`ring_exchange`). Like :meth:`call`: a tierflow error for an
        error reply, None when a lane is busy or broke (broken ones are dropped; nothing was answered)."""
        held = self._held.get(last)
        if held is None:
            return self.call(peer, lane, request)
        self._stamp(request)
        try:
            got = ring_exchange(lane, held, request)
        except TransportError as exc:
            self._drop(peer, lane, exc)
            if self._held.get(last) is held:
                del self._held[last]
            return None
        if got is None:
            return None
        response, on_ring = got
        return response.raise_for_error(last if on_ring else peer)

    def hold_soon(self, peer: str, peers: Peers, request: StageRequest) -> None:
        """Open a second lane to ``peer`` in the background and send ``request`` on it, which holds it
        (the peer answers it, then keeps the lane for replies it writes later: a ring subscription)."""
        key = f"held:{peer}"
        now = time.monotonic()
        if peer in self._held or now - self._asked.get(key, -REOPEN_AFTER_S) < REOPEN_AFTER_S:
            return
        self._asked[key] = now
        task = asyncio.get_running_loop().create_task(self._hold(peer, peers, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold(self, peer: str, peers: Peers, request: StageRequest) -> None:
        client = await self._connect(peer, peers)
        if client is None:
            return
        try:
            reply = await asyncio.to_thread(client.try_call, request)
            if reply is not None:
                reply.raise_for_error(peer)
        except TierflowError as exc:
            _log.info("no held lane at %s: %s", peer, exc)
            client.close()
            return
        client.held_by = request
        self._held[peer] = client

    def push(self, peer: str, lane: LaneClient, request: StageRequest) -> bool:
        """``request`` pushed over ``lane`` (its response goes elsewhere); False when the lane is busy or
        broke (it is dropped), and nothing was sent."""
        self._stamp(request)
        try:
            return lane.try_push(request)
        except TransportError as exc:
            self._drop(peer, lane, exc)
            return False

    def _stamp(self, request: StageRequest) -> None:
        if self.origin is not None and ORIGIN_KEY not in request.meta:
            request.meta[ORIGIN_KEY] = self.origin

    def _drop(self, peer: str, lane: LaneClient, exc: TransportError) -> None:
        if self._clients.get(peer) is lane:
            del self._clients[peer]
        _log.info("lane to %s dropped: %s", peer, exc)

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
        client = await self._connect(peer, peers)
        if client is not None:
            self._clients[peer] = client

    async def _connect(self, peer: str, peers: Peers) -> LaneClient | None:
        """A new lane to ``peer`` when its ``info`` names one this tier reaches directly."""
        address = self.addresses.get(peer)
        if address is None:
            return None
        try:
            info = (await peers.call(peer, StageRequest("info"))).meta
        except TierflowError:
            return None  # down or busy: asked again later
        target = lane_target(address, info)
        if target is None:
            return None
        client = LaneClient(target, self.identity, peer)
        try:
            await asyncio.to_thread(client.connect)
        except TransportError as exc:
            _log.info("no lane to %s: %s", peer, exc)
            return None
        return client

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in [*self._clients.values(), *self._held.values()]:
            client.close()
        self._clients.clear()
        self._held.clear()


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
    return open_lane_of(session, data, frozenset({kind}))[1]


def open_lane_of(session: Session, data: bytes, kinds: frozenset[Kind]) -> tuple[Kind, OpenedMessage]:
    """Authenticate and parse a lane message of one of ``kinds``: its kind and contents."""
    blob = session.open_bytes(data)
    view = blob.data
    if len(blob) < _HEAD.size:
        raise MessageRejected("malformed", "lane message shorter than its head", None)
    got_kind, rid, count, body_len = _HEAD.unpack_from(view, 0)
    if got_kind not in kinds:
        expected = " or ".join(sorted(k.name for k in kinds))
        raise MessageRejected("unexpected", f"expected a {expected} on the lane, got kind {got_kind}", rid)
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
    return Kind(got_kind), OpenedMessage(rid, header, tensors)


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
