"""The data plane: stage requests and their tensors between tier processes, over mutual TLS.

One persistent TLS connection per client session (asyncio streams; messages are length-prefixed,
:mod:`stream`). The connection opens with a handshake (:mod:`session`) that agrees per-session
AES-256-GCM keys bound to both TLS certificates; every later message is a sealed request or response
(:mod:`envelope`, :mod:`codec`). Many requests may be in flight on one connection: responses carry
the request id and come back in completion order.

A message the server cannot accept is answered with a ``frame_rejected`` response for its request
id (see :class:`session.MessageRejected` for which id is trusted) and counted by reason; a message
too broken to name a request id is dropped and counted. Neither ends the connection.

Why not gRPC (the first transport): a decode step crosses every hop once, with a few KiB; on the
2-core VM a bare gRPC + mTLS round trip of 2 KiB cost 0.32 ms and an asyncio TLS stream's 0.14 ms,
and gRPC's own threads compete with the tiers' compute for the cores.

Async API::

    server = DataPlaneServer(load_identity(pki, "cloud"), handler)   # handler: async (req, peer) -> resp
    port = await server.start("127.0.0.1:0")
    client = DataPlaneClient(f"127.0.0.1:{port}", load_identity(pki, "device"), server_name="cloud")
    await client.connect()
    response = await client.call(StageRequest("echo", inputs={"x": x}))

:class:`SyncDataPlaneClient` offers the client to plain threads (it runs its own event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from tierflow.errors import (
    ConfigError,
    FrameError,
    InvalidInputError,
    KeyAgreementError,
    KVMissingError,
    ModelNotFoundError,
    RecoverableError,
    TierflowError,
    TierUnavailableError,
    TransportError,
    UnknownTargetError,
    UserError,
)
from tierflow.transport import codec
from tierflow.transport.dataplane_metrics import DataPlaneMetrics, PeerMetrics, default_metrics
from tierflow.transport.envelope import MAX_REQUEST_ID
from tierflow.transport.messages import (
    FAILED_TIER_KEY,
    ErrorCode,
    MetaValue,
    PeerInfo,
    StageError,
    StageRequest,
    StageResponse,
)
from tierflow.transport.session import (
    MessageRejected,
    Session,
    alert,
    client_finish,
    client_hello,
    server_accept,
)
from tierflow.transport.stream import StreamClosed, read_message, split_address, tune, write_message
from tierflow.transport.tls import Identity, cert_fingerprint, client_ssl_context, server_ssl_context
from tierflow.types.quant import QuantMode
from tierflow.wire import ChannelConfig

DEFAULT_MAX_MESSAGE_BYTES = 1 << 30  # activations and KV shards travel whole
HANDSHAKE_MAX_BYTES = 64 * 1024  # a HELLO or HELLO_ACK: keys, a certificate and a signature
STREAM_BUFFER_BYTES = 1 << 20  # the reader buffers this much before pausing the socket
OFFLOAD_BYTES = 256 * 1024  # seal/open bigger messages in a worker thread, keeping the loop responsive
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# what a broken connection raises on read or write (a peer gone, a reset, a TLS alert)
_LINK_ERRORS = (TransportError, ConnectionError, ssl.SSLError, OSError)

Handler = Callable[[StageRequest, PeerInfo], Awaitable[StageResponse]]
T = TypeVar("T")
_log = logging.getLogger(__name__)


def error_code_for(exc: BaseException) -> str:
    """The response error code a handler's exception stands for."""
    if isinstance(exc, FrameError):
        return ErrorCode.FRAME_REJECTED
    if isinstance(exc, ModelNotFoundError | UnknownTargetError):
        return ErrorCode.UNKNOWN_MODEL
    if isinstance(exc, UserError):
        return ErrorCode.INVALID_INPUT
    if isinstance(exc, KVMissingError):
        return ErrorCode.KV_MISSING
    if isinstance(exc, RecoverableError):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INTERNAL


def failure_for(request_id: int, exc: BaseException) -> StageResponse:
    """The typed error response a handler's exception stands for; a relayed unavailability names the
    tier really at fault (``FAILED_TIER_KEY``), which ``raise_for_error`` reads back."""
    meta: dict[str, MetaValue] = {}
    if isinstance(exc, TierUnavailableError) and exc.tier:
        meta[FAILED_TIER_KEY] = exc.tier
    return StageResponse(request_id, error=StageError(error_code_for(exc), str(exc)), meta=meta)


async def _maybe_offload(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size >= OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def _close_writer(writer: asyncio.StreamWriter, grace: float) -> None:
    writer.close()
    with contextlib.suppress(Exception):  # a peer that is gone does not answer TLS's close_notify
        await asyncio.wait_for(writer.wait_closed(), max(grace, 0.1))


# --- server -------------------------------------------------------------------------------------


class DataPlaneServer:
    """Serves stage requests from peers whose certificates our CA signed."""

    def __init__(
        self,
        identity: Identity,
        handler: Handler,
        *,
        metrics: DataPlaneMetrics | None = None,
        channel_config: ChannelConfig | None = None,
        max_in_flight: int = 64,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.identity = identity
        self.handler = handler
        self.metrics = metrics or default_metrics()
        self.channel_config = channel_config or ChannelConfig()
        self.max_in_flight = max_in_flight
        self.max_message_bytes = max_message_bytes
        self._ssl = server_ssl_context(identity)
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._stopped = asyncio.Event()
        self._stream_ids = itertools.count(1)
        self.port: int | None = None
        self.sessions = 0  # connections currently open past the handshake

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on ``address`` (``host:port``, port 0 for any); return the bound port."""
        if self._server is not None:
            raise TransportError("data-plane server already started")
        host, port = split_address(address)
        try:
            # SO_REUSEADDR (asyncio's default) but never SO_REUSEPORT: a second node on a busy port fails
            server = await asyncio.start_server(
                self._accept, host, port, ssl=self._ssl, limit=STREAM_BUFFER_BYTES, reuse_port=False
            )
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {address}: the address is in use or not available ({exc.strerror})"
            ) from exc
        self._server, self.port = server, int(server.sockets[0].getsockname()[1])
        self._stopped.clear()
        return self.port

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting connections; in-flight requests get ``grace`` seconds to finish."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        connections = list(self._connections)
        running = {t for c in connections for t in c.tasks}
        if running and grace:
            await asyncio.wait(running, timeout=grace)
        for connection in connections:
            await connection.close()
        self._stopped.set()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._stopped.wait()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream_id = next(self._stream_ids)
        tune(writer)
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:  # cannot happen with CERT_REQUIRED, but never serve an anonymous peer
            await _close_writer(writer, 0)
            return
        try:
            hello = await asyncio.wait_for(
                read_message(reader, HANDSHAKE_MAX_BYTES), DEFAULT_CONNECT_TIMEOUT_S
            )
            session, ack = server_accept(
                hello, self.identity, ssl.DER_cert_to_PEM_cert(der).encode(), self.channel_config
            )
        except (KeyAgreementError, InvalidInputError) as exc:
            self.metrics.handshakes.labels(side="server", outcome="rejected").inc()
            with contextlib.suppress(*_LINK_ERRORS):
                write_message(writer, alert("handshake", str(exc)))
                await writer.drain()
            await _close_writer(writer, 1.0)
            return
        except (*_LINK_ERRORS, TimeoutError):
            await _close_writer(writer, 0)
            return
        self.metrics.handshakes.labels(side="server", outcome="ok").inc()
        host, port, *_ = writer.get_extra_info("peername") or ("?", 0)
        peer = PeerInfo(session.peer_name, session.peer_fingerprint, f"{host}:{port}", stream_id)
        peer_metrics = self.metrics.for_peer("server", peer.name)
        peer_metrics.received.inc(len(hello))
        peer_metrics.sent.inc(len(ack))
        conn = _ServerConnection(self, session, peer, peer_metrics, reader, writer)
        self._connections.add(conn)
        self.sessions += 1
        try:
            write_message(writer, ack)
            await writer.drain()
            await conn.serve()
        except _LINK_ERRORS:
            pass  # the peer went away
        finally:
            self.sessions -= 1
            self._connections.discard(conn)
            await conn.close()


class _ServerConnection:
    """One connection's session on the server: reads requests in order, serves them concurrently."""

    def __init__(
        self,
        server: DataPlaneServer,
        session: Session,
        peer: PeerInfo,
        peer_metrics: PeerMetrics,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.m = peer_metrics
        self.session = session
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self._write_lock = asyncio.Lock()  # responses go out in the order they are sealed
        self._slots = asyncio.Semaphore(server.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        try:
            while True:
                try:
                    data = await read_message(self.reader, self.server.max_message_bytes)
                except StreamClosed:
                    break
                received = time.perf_counter()
                self.m.received.inc(len(data))
                try:
                    if len(data) < OFFLOAD_BYTES:
                        request = codec.open_request(self.session, data)
                    else:
                        request = await asyncio.to_thread(codec.open_request, self.session, data)
                except MessageRejected as exc:
                    await self._reject(exc)
                    continue
                await self._slots.acquire()
                task = asyncio.create_task(self._run(request, received))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            if self.tasks:  # the peer finished sending: let the requests it is waiting for complete
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await _close_writer(self.writer, 0)

    async def _reject(self, exc: MessageRejected) -> None:
        self.m.rejected(exc.reason)
        self.m.request(ErrorCode.FRAME_REJECTED)
        if exc.request_id is None:
            _log.info("dropped a message from %s: %s", self.peer.name, exc)
            return
        await self._send(
            StageResponse.failure(exc.request_id, ErrorCode.FRAME_REJECTED, exc.detail, exc.reason)
        )

    async def _run(self, request: StageRequest, received: float) -> None:
        try:
            try:
                response = await self.server.handler(request, self.peer)
                if not isinstance(response, StageResponse):
                    raise TypeError(f"handler returned {type(response).__name__}, not a StageResponse")
            except TierflowError as exc:
                response = StageResponse.failure(request.request_id, error_code_for(exc), str(exc))
            except Exception as exc:
                _log.exception("data-plane handler failed on %s", request.op)
                response = StageResponse.failure(
                    request.request_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"
                )
            response.request_id = request.request_id
            asked = request.response_quant
            if response.error is None and asked is not None and response.quant == QuantMode.RAW:
                response.quant = asked
            outcome = await self._send(response)
            self.m.request(outcome, time.perf_counter() - received)
        except (*_LINK_ERRORS, asyncio.CancelledError):
            pass  # the connection went away: nobody is left to answer
        finally:
            self._slots.release()

    async def _send(self, response: StageResponse) -> str:
        """Seal and write ``response``; return the outcome actually sent ("ok" or an error code)."""
        async with self._write_lock:
            try:
                size = sum(getattr(a, "nbytes", 0) for a in response.outputs.values())
                data = await _maybe_offload(size, codec.seal_response, self.session, response)
            except Exception as exc:  # the handler returned something unsendable
                _log.warning("unsendable response to %s: %s", self.peer.name, exc)
                response = StageResponse.failure(
                    response.request_id, ErrorCode.INTERNAL, f"unsendable response: {exc}"
                )
                data = codec.seal_response(self.session, response)
            write_message(self.writer, data)
            await self.writer.drain()
        self.m.sent.inc(len(data))
        return "ok" if response.error is None else response.error.code


# --- client -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedRequest:
    """A request already sealed into its message (see :meth:`DataPlaneClient.seal`)."""

    request_id: int
    data: bytes


class DataPlaneClient:
    """One persistent, pipelined session to a data-plane server.

    ``target`` is where to connect (``host:port``; a link emulator or other TCP proxy is fine);
    ``server_name`` is the node the server must prove to be (TLS and handshake): its node name.
    (Every node certificate also names ``localhost`` and 127.0.0.1, so those accept any node of the
    CA.) ``pinned_cert`` (PEM or DER) additionally requires that exact certificate.
    """

    def __init__(
        self,
        target: str,
        identity: Identity,
        server_name: str,
        *,
        pinned_cert: bytes | None = None,
        metrics: DataPlaneMetrics | None = None,
        channel_config: ChannelConfig | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.identity = identity
        if not server_name:
            raise ConfigError("a data-plane client needs the server's node name (server_name)")
        self.server_name = server_name
        self.pinned_fingerprint = cert_fingerprint(pinned_cert) if pinned_cert is not None else None
        self.metrics = metrics or default_metrics()
        self.m = self.metrics.for_peer("client", self.server_name)
        self.channel_config = channel_config or ChannelConfig()
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self._ssl = client_ssl_context(identity)
        self._writer: asyncio.StreamWriter | None = None
        self._session: Session | None = None
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[StageResponse]] = {}
        self._ids = itertools.count(1)
        self._broken: str | None = None

    @property
    def connected(self) -> bool:
        return self._session is not None and self._broken is None

    @property
    def session(self) -> Session:
        if self._session is None:
            raise TransportError(f"not connected to {self.server_name}; call connect() first")
        return self._session

    @property
    def peer_name(self) -> str:
        return self.session.peer_name

    async def __aenter__(self) -> DataPlaneClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and run the handshake; raises TransportError (TLS refused, bad server,
        timeout)."""
        if self.connected:
            return
        await self.close()
        self._broken = None
        host, port = split_address(self.target)
        where = f"{self.server_name} at {self.target}"
        share, hello = client_hello()
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=str(self.server_name),  # a plain str: uvloop takes no StrEnum
                    limit=STREAM_BUFFER_BYTES,
                )
                tune(writer)
                write_message(writer, hello)
                await writer.drain()
                ack = await read_message(reader, HANDSHAKE_MAX_BYTES)
            session = client_finish(
                share,
                hello,
                ack,
                self.identity,
                self.server_name,
                self.channel_config,
                self.pinned_fingerprint,
            )
        except TimeoutError:
            await self._fail_connect(writer)
            raise TransportError(f"no handshake from {where} within {self.connect_timeout:g}s") from None
        except StreamClosed:
            await self._fail_connect(writer)
            raise TransportError(
                f"{where} closed the stream during the handshake (did it refuse our certificate?)"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            await self._fail_connect(writer)
            raise TransportError(
                f"cannot reach {where}: its TLS certificate is refused ({exc.verify_message})"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            await self._fail_connect(writer)
            reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            raise TransportError(f"cannot reach {where}: {str(reason).lower()}") from None
        except BaseException:
            await self._fail_connect(writer)
            raise
        self._writer, self._session = writer, session
        self.metrics.handshakes.labels(side="client", outcome="ok").inc()
        self.m.sent.inc(len(hello))
        self.m.received.inc(len(ack))
        self._reader = asyncio.create_task(self._read_loop(reader, session))

    async def _fail_connect(self, writer: asyncio.StreamWriter | None) -> None:
        self.metrics.handshakes.labels(side="client", outcome="failed").inc()
        if writer is not None:
            await _close_writer(writer, 0)
        await self.close()

    async def close(self, grace: float = 1.0) -> None:
        """End the connection. Replies already on their way are delivered for up to ``grace``
        seconds; calls still pending after that fail with ``disconnected``."""
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        self._session = None  # no new calls from here on
        waiting = [f for f in self._pending.values() if not f.done()]
        if waiting and reader is not None and not reader.done() and grace > 0:
            await asyncio.wait(waiting, timeout=grace)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if writer is not None:
            await _close_writer(writer, grace)
        self._fail_pending("connection closed")

    def seal(self, request: StageRequest) -> SealedRequest:
        """Give ``request`` the next request id and seal it, without sending (tests pipeline or alter it).

        The receiver's replay window tolerates sealed requests sent out of order by up to
        ``ChannelConfig.replay_window`` frames.
        """
        request.request_id = next(self._ids) % (MAX_REQUEST_ID + 1)
        return SealedRequest(request.request_id, codec.seal_request(self.session, request))

    async def call(self, request: StageRequest, timeout: float | None = None) -> StageResponse:
        """Send ``request`` and wait for its response (``timeout`` seconds; None waits for ever).

        Returns the response even when it carries an error (``response.raise_for_error()``); raises
        InvalidInputError for a request that cannot be sealed and TransportError when the stream is
        down or the reply does not come in time.
        """
        self._check_usable()
        started = time.perf_counter()
        size = sum(getattr(a, "nbytes", 0) for a in request.inputs.values())
        async with self._send_lock:  # sealing order = sending order: sequence numbers arrive in order
            sealed = (
                self.seal(request) if size < OFFLOAD_BYTES else await asyncio.to_thread(self.seal, request)
            )
            future = self._expect(sealed.request_id)
            await self._write(sealed.data)
        return await self._wait(sealed.request_id, future, timeout, started)

    async def call_sealed(self, sealed: SealedRequest, timeout: float | None = None) -> StageResponse:
        """Send a message made by :meth:`seal` (possibly altered) and wait for its request id's response."""
        self._check_usable()
        started = time.perf_counter()
        future = self._expect(sealed.request_id)
        async with self._send_lock:
            await self._write(sealed.data)
        return await self._wait(sealed.request_id, future, timeout, started)

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as one stream message, unchecked (tests of what the server does with junk)."""
        self._check_usable()
        async with self._send_lock:
            await self._write(data)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise TransportError(f"stream to {self.server_name} is down: {self._broken}")
        if self._session is None:
            raise TransportError(f"not connected to {self.server_name}; call connect() first")

    def _expect(self, request_id: int) -> asyncio.Future[StageResponse]:
        future: asyncio.Future[StageResponse] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    async def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or self._broken is not None:
            raise TransportError(f"stream to {self.server_name} is down: {self._broken or 'closed'}")
        try:
            write_message(writer, data)
            await writer.drain()
        except _LINK_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
            self._mark_broken(reason)
            raise TransportError(f"stream to {self.server_name} is down: {reason}") from None
        self.m.sent.inc(len(data))

    async def _wait(
        self, request_id: int, future: asyncio.Future[StageResponse], timeout: float | None, started: float
    ) -> StageResponse:
        try:
            response = await (future if timeout is None else asyncio.wait_for(future, timeout))
        except TimeoutError:
            raise TransportError(
                f"no reply from {self.server_name} to request {request_id} within {timeout:g}s"
            ) from None
        finally:
            if self._pending.get(request_id) is future:
                del self._pending[request_id]
        outcome = "ok" if response.error is None else response.error.code
        self.m.request(outcome, time.perf_counter() - started)
        if response.error is not None and response.error.code == ErrorCode.DISCONNECTED:
            raise TransportError(
                f"stream to {self.server_name} broke before request {request_id} was answered: "
                f"{response.error.message}"
            )
        return response

    async def _read_loop(self, reader: asyncio.StreamReader, session: Session) -> None:
        reason = "server ended the stream"
        try:
            while True:
                data = await read_message(reader, self.max_message_bytes)
                self.m.received.inc(len(data))
                if len(data) < OFFLOAD_BYTES:
                    self._deliver(self._open(session, data))
                else:
                    self._deliver(await asyncio.to_thread(self._open, session, data))
        except StreamClosed:
            pass
        except _LINK_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
        except asyncio.CancelledError:
            reason = "connection closed"
            raise
        finally:
            self._mark_broken(reason)

    @staticmethod
    def _open(session: Session, data: bytes) -> StageResponse | MessageRejected:
        try:
            return codec.open_response(session, data)
        except MessageRejected as exc:
            return exc

    def _deliver(self, item: StageResponse | MessageRejected) -> None:
        if isinstance(item, MessageRejected):
            self.m.rejected(item.reason)
            _log.warning("rejected a response from %s: %s", self.server_name, item)
            if item.request_id is None:
                return
            item = StageResponse.failure(item.request_id, ErrorCode.FRAME_REJECTED, item.detail, item.reason)
        future = self._pending.pop(item.request_id, None)
        if future is None or future.done():
            self.m.rejected("unknown_request")
            return
        future.set_result(item)

    def _mark_broken(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for rid, future in pending.items():
            if not future.done():
                future.set_result(StageResponse.failure(rid, ErrorCode.DISCONNECTED, reason))


# --- sync wrapper -------------------------------------------------------------------------------


class SyncDataPlaneClient:
    """A :class:`DataPlaneClient` for threads without an event loop: it runs one in a daemon thread.

    Safe to call from several threads at once; calls pipeline on the one stream.
    """

    def __init__(self, target: str, identity: Identity, server_name: str, **kwargs: Any) -> None:
        self.client = DataPlaneClient(target, identity, server_name, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tierflow-dataplane", daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop.is_closed():
            coro.close()
            raise TransportError("data-plane client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def connect(self) -> SyncDataPlaneClient:
        self._run(self.client.connect())
        return self

    def call(self, request: StageRequest, timeout: float | None = None) -> StageResponse:
        return self._run(self.client.call(request, timeout))

    @property
    def connected(self) -> bool:
        return self.client.connected

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self.client.close(), timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()

    def __enter__(self) -> SyncDataPlaneClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
