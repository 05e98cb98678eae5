"""The data plane: stage requests and their tensors between tier processes, over mutual-TLS gRPC.

One persistent bidirectional gRPC stream per client connection (method
``/tierflow.DataPlane/Stream``, raw-bytes messages, no protoc). The stream opens with a handshake
(:mod:`session`) that agrees per-session AES-256-GCM keys bound to both TLS certificates; every
later message is a sealed request or response (:mod:`envelope`, :mod:`codec`). Many requests may
be in flight on one stream: responses carry the request id and come back in completion order.

A message the server cannot accept is answered with a ``frame_rejected`` response for its request
id (see :class:`session.MessageRejected` for which id is trusted) and counted by reason; a message
too broken to name a request id is dropped and counted. Neither ends the stream.

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
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from tierflow.errors import (
    ConfigError,
    FrameError,
    InvalidInputError,
    KeyAgreementError,
    KVMissingError,
    ModelNotFoundError,
    RecoverableError,
    TierflowError,
    TransportError,
    UnknownTargetError,
    UserError,
)
from tierflow.transport import codec
from tierflow.transport.dataplane_metrics import DataPlaneMetrics, PeerMetrics, default_metrics
from tierflow.transport.envelope import MAX_REQUEST_ID
from tierflow.transport.messages import ErrorCode, PeerInfo, StageRequest, StageResponse
from tierflow.transport.session import (
    MessageRejected,
    Session,
    alert,
    client_finish,
    client_hello,
    server_accept,
)
from tierflow.transport.tls import Identity, cert_fingerprint, channel_credentials, server_credentials
from tierflow.types.quant import QuantMode
from tierflow.wire import ChannelConfig

SERVICE = "tierflow.DataPlane"
METHOD = "Stream"
PATH = f"/{SERVICE}/{METHOD}"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30  # gRPC's default is 4 MiB; activations and KV shards are larger
OFFLOAD_BYTES = 256 * 1024  # seal/open bigger messages in a worker thread, keeping the loop responsive
DEFAULT_CONNECT_TIMEOUT_S = 10.0

Handler = Callable[[StageRequest, PeerInfo], Awaitable[StageResponse]]
T = TypeVar("T")
_log = logging.getLogger(__name__)


def grpc_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Channel/server options shared by both ends: big messages, keepalive on idle persistent streams."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


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


async def _maybe_offload(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size >= OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


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
        self._options = grpc_options(max_message_bytes)
        self._server: grpc.aio.Server | None = None
        self._stream_ids = itertools.count(1)
        self.port: int | None = None
        self.sessions = 0  # streams currently open

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on ``address`` (``host:port``, port 0 for any); return the bound port."""
        if self._server is not None:
            raise TransportError("data-plane server already started")
        # no SO_REUSEPORT: a second node on a busy port must fail, not share the port silently
        server = grpc.aio.server(options=[*self._options, ("grpc.so_reuseport", 0)])
        behavior = grpc.stream_stream_rpc_method_handler(self._stream)  # no (de)serializers: raw bytes
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: behavior}),))
        try:
            port = int(server.add_secure_port(address, server_credentials(self.identity)))
        except RuntimeError as exc:
            raise TransportError(
                f"cannot listen on {address}: the address is in use or not available"
            ) from exc
        if port == 0:
            raise TransportError(f"cannot listen on {address}: the address is in use or not available")
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting streams; in-flight requests get ``grace`` seconds to finish."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        stream_id = next(self._stream_ids)
        pem = _peer_cert(context)
        if pem is None:  # cannot happen with require_client_auth, but never serve an anonymous peer
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
            return
        incoming = requests.__aiter__()
        try:
            hello = await anext(incoming)
        except StopAsyncIteration:
            return
        try:
            session, ack = server_accept(hello, self.identity, pem, self.channel_config)
        except (KeyAgreementError, InvalidInputError) as exc:
            self.metrics.handshakes.labels(side="server", outcome="rejected").inc()
            await context.write(alert("handshake", str(exc)))
            return
        self.metrics.handshakes.labels(side="server", outcome="ok").inc()
        peer = PeerInfo(session.peer_name, session.peer_fingerprint, context.peer(), stream_id)
        peer_metrics = self.metrics.for_peer("server", peer.name)
        peer_metrics.received.inc(len(hello))
        peer_metrics.sent.inc(len(ack))
        await context.write(ack)
        conn = _ServerConnection(self, session, peer, peer_metrics, context)
        self.sessions += 1
        try:
            await conn.serve(incoming)
        finally:
            self.sessions -= 1


def _peer_cert(context: grpc.aio.ServicerContext) -> bytes | None:
    values = context.auth_context().get("x509_pem_cert")
    return bytes(values[0]) if values else None


class _ServerConnection:
    """One stream's session on the server: reads requests in order, serves them concurrently."""

    def __init__(
        self,
        server: DataPlaneServer,
        session: Session,
        peer: PeerInfo,
        peer_metrics: PeerMetrics,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.server = server
        self.m = peer_metrics
        self.session = session
        self.peer = peer
        self.context = context
        self._write_lock = asyncio.Lock()  # responses go out in the order they are sealed
        self._slots = asyncio.Semaphore(server.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, incoming: AsyncIterator[bytes]) -> None:
        try:
            async for data in incoming:
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
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            if self._tasks:  # the peer finished sending: let the requests it is waiting for complete
                await asyncio.gather(*self._tasks, return_exceptions=True)

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
        except (grpc.aio.AioRpcError, asyncio.CancelledError, ConnectionError):
            pass  # the stream went away: nobody is left to answer
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
            await self.context.write(data)
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
        self._options = [
            *grpc_options(max_message_bytes),
            ("grpc.ssl_target_name_override", self.server_name),
        ]
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
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
        """Open the stream and run the handshake; raises TransportError (TLS refused, bad server, timeout)."""
        if self.connected:
            return
        await self.close()
        self._broken = None
        self._channel = grpc.aio.secure_channel(
            self.target, channel_credentials(self.identity), self._options
        )
        call = self._channel.stream_stream(PATH, request_serializer=None, response_deserializer=None)()
        self._call = call
        share, hello = client_hello()
        try:
            await asyncio.wait_for(call.write(hello), self.connect_timeout)
            ack = await asyncio.wait_for(call.read(), self.connect_timeout)
            if ack is grpc.aio.EOF:
                raise TransportError(
                    f"{self.server_name} at {self.target} closed the stream during the handshake"
                )
            self._session = client_finish(
                share,
                hello,
                ack,
                self.identity,
                self.server_name,
                self.channel_config,
                self.pinned_fingerprint,
            )
        except TimeoutError:
            await self._fail_connect()
            raise TransportError(
                f"no handshake from {self.server_name} at {self.target} within {self.connect_timeout:g}s"
            ) from None
        except grpc.aio.AioRpcError as exc:
            await self._fail_connect()
            raise TransportError(
                f"cannot reach {self.server_name} at {self.target}: {_rpc_text(exc)}"
            ) from None
        except BaseException:
            await self._fail_connect()
            raise
        self.metrics.handshakes.labels(side="client", outcome="ok").inc()
        self.m.sent.inc(len(hello))
        self.m.received.inc(len(ack))
        self._reader = asyncio.create_task(self._read_loop(call, self._session))

    async def _fail_connect(self) -> None:
        self.metrics.handshakes.labels(side="client", outcome="failed").inc()
        await self.close()

    async def close(self, grace: float = 1.0) -> None:
        """Finish the stream and the channel. Replies already on their way are delivered for up to
        ``grace`` seconds; calls still pending after that fail with ``disconnected``."""
        call, channel, reader = self._call, self._channel, self._reader
        self._call = self._channel = self._reader = None
        self._session = None  # no new calls from here on
        if call is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(call.done_writing(), grace)
        if reader is not None:
            # the server ends its side once it has answered everything: the reader then sees EOF
            finished, _ = await asyncio.wait({reader}, timeout=grace)
            if not finished:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
        if call is not None:
            call.cancel()
        if channel is not None:
            await channel.close()
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
        assert self._call is not None
        try:
            await self._call.write(data)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            reason = _rpc_text(exc) if isinstance(exc, grpc.aio.AioRpcError) else "stream closed"
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

    async def _read_loop(self, call: grpc.aio.StreamStreamCall, session: Session) -> None:
        reason = "server ended the stream"
        try:
            while True:
                data = await call.read()
                if data is grpc.aio.EOF:
                    break
                self.m.received.inc(len(data))
                if len(data) < OFFLOAD_BYTES:
                    self._deliver(self._open(session, data))
                else:
                    self._deliver(await asyncio.to_thread(self._open, session, data))
        except grpc.aio.AioRpcError as exc:
            reason = _rpc_text(exc)
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


def _rpc_text(exc: grpc.aio.AioRpcError) -> str:
    details = (exc.details() or "").strip().splitlines()
    return f"{exc.code().name.lower()}: {details[0] if details else 'no details'}"


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
