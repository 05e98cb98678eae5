"""User-space link emulation: a shaping TCP proxy between two tiers.

Kernel ``netem`` is not available here, so a :class:`LinkEmulator` listens
on a loopback port, opens a connection to the upstream tier for every
connection it accepts, and passes the bytes both ways -- untouched, in order
-- but *when* a link with the current :class:`~tierflow.transport.profiles.LinkProfile`
would deliver them. It never parses the stream, so gRPC, TLS or anything else
runs through it unchanged.

Per direction and connection, bytes go through three stages (docs/NETWORK.md
has the full model and its limits):

1. **serialisation** -- segments of at most ~2 ms of airtime reserve time on
   the direction's link (shared by all connections, a virtual clock, so the
   average rate is exact even though asyncio timers tick in milliseconds);
2. **loss** -- each MSS-sized packet is lost with probability ``loss``; TCP
   repairs it, so the loss shows up as time: the connection stalls one RTT
   (fast retransmit) or one RTO (a tail loss with nothing behind it), and every
   byte behind the lost one waits (in-order delivery);
3. **propagation** -- a timed delivery queue: a segment arrives RTT/2 plus
   Gaussian jitter after it left, never before the segment ahead of it.

Profile ``offline`` stops listening (``connect`` is refused) and resets open
connections; a bandwidth of 0 (an outage in a trace) holds the bytes until
the link comes back.

Use from sync code (a background event loop thread)::

    with LinkEmulator(("127.0.0.1", 9000), "4g") as link:
        sock = socket.create_connection(link.address)
        link.set_profile("3g")          # takes effect at once
        print(link.stats().down.bytes)

or from async code: ``async with LinkEmulator(...) as link: ...``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tierflow.errors import ConfigError, TransportError
from tierflow.transport.profiles import LinkTrace
from tierflow.types.links import Direction, DirectionParams, LinkProfile, get_profile

MSS = 1460  # bytes per emulated packet (Ethernet MTU minus IP/TCP headers)
MIN_RTO_S = 0.2  # Linux's minimum TCP retransmission timeout
SEGMENT_AIRTIME_S = 0.002  # a segment carries at most this much airtime: shaping stays smooth
MAX_SEGMENT = 64 * 1024
TIMER_SLACK_S = 0.0005  # asyncio timers wake on whole milliseconds here: aim half a ms early
SPIN_BELOW_DELAY_S = 0.002  # on links with a one-way delay below this, small messages (at most
SPIN_MAX_BYTES = 16 * 1024  # this much in flight) are timed by yielding to the loop for their
SPIN_S = 0.001  # last millisecond instead of by the millisecond timer
RX_HIGH = 512 * 1024  # stop reading a socket with this much unscheduled data; resume below RX_LOW
RX_LOW = 128 * 1024
BACKLOG = 128
_CROSS_THREAD_TIMEOUT_S = 10.0

_log = logging.getLogger(__name__)

Address = tuple[str, int]
T = TypeVar("T")


def segment_size(bandwidth_bps: float) -> int:
    """Bytes per emulated segment at this bandwidth: ~2 ms of airtime, between one MSS and 64 KiB."""
    if math.isinf(bandwidth_bps):
        return MAX_SEGMENT
    return int(min(MAX_SEGMENT, max(MSS, bandwidth_bps * SEGMENT_AIRTIME_S / 8)))


def rto_s(params: DirectionParams) -> float:
    """The retransmission timeout a tail loss costs: RFC 6298's SRTT + 4*RTTVAR, at least 200 ms."""
    return max(MIN_RTO_S, 2 * params.delay_s + 4 * params.jitter_s)


@dataclass(frozen=True, slots=True)
class DirectionStats:
    """Counters of one direction since the emulator started (all connections)."""

    bytes: int  # delivered to the receiving side
    segments: int
    lost_packets: int
    fast_retransmits: int  # losses repaired in one RTT
    timeouts: int  # tail losses repaired after an RTO
    stall_s: float  # total time connections stalled on losses


@dataclass(frozen=True, slots=True)
class LinkStats:
    """A snapshot of a running emulator."""

    profile: LinkProfile
    up: DirectionStats
    down: DirectionStats
    connections: int  # accepted since start
    active: int
    upstream_failures: int  # accepted, but the upstream refused
    resets: int  # connections reset by the emulator (offline, stop) or by either end

    def direction(self, which: Direction) -> DirectionStats:
        return self.up if which is Direction.UP else self.down


def parse_address(text: str, *, default_host: str = "127.0.0.1") -> Address:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` -> ``(host, port)``, else :class:`ConfigError`."""
    host, sep, port_s = text.strip().rpartition(":")
    if not sep:
        raise ConfigError(f"address {text!r} is not HOST:PORT")
    host = host.strip("[]") or default_host
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"address {text!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"address {text!r}: port out of range")
    return host, port


# --- the event-loop side -------------------------------------------------------


class _Link:
    """One direction of the emulated link, shared by every connection through it."""

    def __init__(self, params: DirectionParams) -> None:
        self.params = params
        self.free_at = 0.0  # loop time at which the link finishes its current reservations
        self._changed = asyncio.Event()
        self.bytes = self.segments = self.lost = self.fast = self.timeouts = 0
        self.stall_s = 0.0

    def set_params(self, params: DirectionParams) -> None:
        self.params = params
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self) -> None:
        await self._changed.wait()

    def stats(self) -> DirectionStats:
        return DirectionStats(self.bytes, self.segments, self.lost, self.fast, self.timeouts, self.stall_s)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    while (left := when - loop.time()) > TIMER_SLACK_S:
        await asyncio.sleep(left - TIMER_SLACK_S)


class _Endpoint(asyncio.Protocol):
    """One socket of a proxied connection: stamps each chunk it receives with the time it
    arrived, and applies flow control both ways (pause reading / wait for the write buffer)."""

    def __init__(self, on_connect: Callable[[_Endpoint], None] | None = None) -> None:
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self.rx: deque[tuple[float, bytes]] = deque()
        self.rx_bytes = 0
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading_paused = False

    # -- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio skips this for sockets accepted from a proto-0 listener
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # timing is ours, not Nagle's
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        self.rx.append((asyncio.get_running_loop().time(), data))
        self.rx_bytes += len(data)
        self._readable.set()
        if self.rx_bytes >= RX_HIGH and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._readable.set()
        return True  # keep the socket open: the other direction may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost, self.error, self.eof = True, exc, True
        self._readable.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- used by the flows

    async def read(self) -> tuple[float, bytes] | None:
        """The next chunk and when it arrived; ``None`` at EOF; a reset raises."""
        while True:
            if self.error is not None:
                raise ConnectionResetError(f"connection lost: {self.error}")
            if self.rx:
                t, data = self.rx.popleft()
                self.rx_bytes -= len(data)
                if self._reading_paused and self.rx_bytes <= RX_LOW and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return t, data
            if self.eof:
                return None
            self._readable.clear()
            await self._readable.wait()

    async def write(self, chunks: list[bytes]) -> None:
        if self.lost or self.transport is None:
            raise ConnectionResetError("connection lost")
        self.transport.writelines(chunks)
        await self._writable.wait()
        if self.lost:
            raise ConnectionResetError("connection lost")

    def write_eof(self) -> None:
        if self.transport is not None and not self.lost and self.transport.can_write_eof():
            self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), the way a dropped link looks to the other end."""
        if self.transport is None or self.lost:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class LossModel:
    """Which MSS-sized packets of a byte stream are lost, and how TCP repairs each.

    Packets are lost independently with probability ``p``; a geometric gap
    between losses makes that exact per packet without a random draw per
    packet. A loss with at least three packets behind it (in the same segment
    or in bytes already read after it) is repaired by fast retransmit (three
    duplicate ACKs, about one RTT); a loss with fewer behind it -- the tail of a
    message, a lone small request -- waits for the retransmission timeout.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._p = 0.0
        self._until_loss = 0  # packets still delivered before the next loss

    def segment(self, nbytes: int, behind: int, p: float) -> tuple[int, int]:
        """Losses among the packets of ``nbytes`` with ``behind`` bytes after them ->
        (fast retransmits, timeouts)."""
        if p <= 0:
            return 0, 0
        if p != self._p:
            self._p = p
            self._until_loss = self._gap(p)
        packets = -(-nbytes // MSS)
        fast = slow = 0
        idx = 0
        while self._until_loss < packets - idx:
            idx += self._until_loss  # index of the lost packet in this segment
            if nbytes - (idx + 1) * MSS + behind >= 3 * MSS:
                fast += 1
            else:
                slow += 1
            idx += 1
            self._until_loss = self._gap(p)
        self._until_loss -= packets - idx
        return fast, slow

    def _gap(self, p: float) -> int:
        return int(math.log1p(-self._rng.random()) / math.log1p(-p))


class _Flow:
    """One direction of one connection: read, shape, deliver in order."""

    def __init__(self, link: _Link, src: _Endpoint, dst: _Endpoint, rng: random.Random) -> None:
        self.link, self.src, self.dst, self.rng = link, src, dst, rng
        self.flight: deque[tuple[float, bytes | None]] = deque()  # (arrival time, bytes); None = EOF
        self.flight_bytes = 0
        self.resume_at = 0.0  # the connection may not send before this (handshake, loss stall)
        self.last_arrival = 0.0
        self._has_data = asyncio.Event()
        self._room = asyncio.Event()
        self.loss = LossModel(rng)

    # -- reading and scheduling

    async def pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self.src.read()
            if item is None:  # EOF travels like a packet, behind everything sent before it
                depart = max(loop.time(), self.resume_at)
                self._push(max(self.last_arrival, depart + self.link.params.delay_s), None)
                return
            t_avail, data = item
            off, total = 0, len(data)
            while off < total:
                p = self.link.params
                if p.bandwidth_bps <= 0:  # outage: hold the bytes until the link is back
                    await self.link.changed()
                    self.resume_at = max(self.resume_at, loop.time())
                    continue
                if self.flight_bytes >= _flight_limit(p):  # the receiver is not keeping up
                    self._room.clear()
                    await self._room.wait()
                    self.resume_at = max(self.resume_at, loop.time())
                    continue
                if self.resume_at - loop.time() > TIMER_SLACK_S:  # previous segment still on the wire
                    await _sleep_until(loop, self.resume_at)
                    continue
                n = min(segment_size(p.bandwidth_bps), total - off)
                seg = data if n == total else data[off:off + n]
                off += n
                self._schedule(seg, p, total - off, t_avail)

    def _schedule(self, seg: bytes, p: DirectionParams, behind: int, t_avail: float) -> None:
        # A segment leaves once its bytes are here, the link is free and the connection is
        # not stalled. Using the arrival stamp (not "now") keeps the rate exact when the
        # loop wakes late: bytes that were waiting do not lose link time.
        link = self.link
        tx = 0.0 if math.isinf(p.bandwidth_bps) else len(seg) * 8 / p.bandwidth_bps
        end = max(t_avail, link.free_at, self.resume_at) + tx
        link.free_at = end
        penalty = 0.0
        if p.loss > 0:
            fast, slow = self.loss.segment(len(seg), behind, p.loss)
            if fast or slow:
                resend = 0.0 if math.isinf(p.bandwidth_bps) else MSS * 8 / p.bandwidth_bps
                penalty = fast * 2 * p.delay_s + slow * rto_s(p) + (fast + slow) * resend
                link.lost += fast + slow
                link.fast += fast
                link.timeouts += slow
                link.stall_s += penalty
        self.resume_at = end + penalty
        delay = p.delay_s
        if p.jitter_s > 0:
            delay = max(0.0, delay + self.rng.gauss(0.0, p.jitter_s))
        link.segments += 1
        self._push(max(end + penalty + delay, self.last_arrival), seg)

    def _push(self, arrival: float, seg: bytes | None) -> None:
        self.last_arrival = arrival
        self.flight.append((arrival, seg))
        if seg is not None:
            self.flight_bytes += len(seg)
        self._has_data.set()

    # -- delivering

    async def deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.flight:
                self._has_data.clear()
                await self._has_data.wait()
            wait = self.flight[0][0] - loop.time()
            if self.flight_bytes <= SPIN_MAX_BYTES and self.link.params.delay_s < SPIN_BELOW_DELAY_S:
                # A small message on a sub-millisecond link: the timer (whole milliseconds)
                # would swamp its delay, so sleep until about a millisecond before it is due
                # and yield to the loop for the rest. Elsewhere the rounding below is a few
                # percent of the delay at most, and spinning would cost CPU for nothing.
                if wait > SPIN_S:
                    await asyncio.sleep(wait - SPIN_S)
                    continue
                if wait > 0:
                    await asyncio.sleep(0)
                    continue
                horizon = loop.time()
            else:  # deliver within about half a millisecond of the due time, either side
                if wait > TIMER_SLACK_S:
                    await asyncio.sleep(wait - TIMER_SLACK_S)
                    continue
                horizon = loop.time() + TIMER_SLACK_S
            chunks: list[bytes] = []
            eof = False
            while self.flight and self.flight[0][0] <= horizon:
                seg = self.flight.popleft()[1]
                if seg is None:
                    eof = True
                    break
                chunks.append(seg)
            n = sum(len(c) for c in chunks)
            if chunks:
                await self.dst.write(chunks)
            self.flight_bytes -= n
            self.link.bytes += n
            self._room.set()
            if eof:
                self.dst.write_eof()
                return


def _flight_limit(p: DirectionParams) -> float:
    """Bytes a connection may have in flight before it waits for the receiver: twice the
    bandwidth-delay product plus 10 ms of data, at least 1 MiB -- generous enough that a
    receiver busy for a moment costs no link time, bounded for one that stops reading."""
    if math.isinf(p.bandwidth_bps):
        return 8 * 1024 * 1024
    return max(1024 * 1024, p.bandwidth_bps / 8 * (2 * (p.delay_s + 3 * p.jitter_s) + 0.01))


class _Connection:
    def __init__(self, core: _Core, client: _Endpoint) -> None:
        self.core = core
        self.client = client
        self.upstream: _Endpoint | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.aborted = False

    async def run(self) -> None:
        core = self.core
        loop = asyncio.get_running_loop()
        up, down = core.links[Direction.UP], core.links[Direction.DOWN]
        # The TCP handshake: the SYN crosses the uplink (held during an outage), the SYN-ACK
        # comes back; the client's first byte can leave one RTT after it connected.
        t0 = loop.time()
        while up.params.bandwidth_bps <= 0:
            await up.changed()
            t0 = loop.time()
        await _sleep_until(loop, t0 + up.params.delay_s)
        try:
            _, upstream = await loop.create_connection(_Endpoint, *core.upstream)
        except OSError:
            core.upstream_failures += 1
            self.abort()
            return
        self.upstream = upstream
        if self.aborted:  # went offline while connecting
            upstream.reset()
            return
        f_up = _Flow(up, self.client, upstream, random.Random(core.rng.getrandbits(64)))
        f_down = _Flow(down, upstream, self.client, random.Random(core.rng.getrandbits(64)))
        f_up.resume_at = t0 + up.params.delay_s + down.params.delay_s
        coros = (f_up.pump(), f_up.deliver(), f_down.pump(), f_down.deliver())
        self.tasks = [asyncio.create_task(c) for c in coros]
        done, pending = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = pending or any(not t.cancelled() and t.exception() is not None for t in done)
        if failed and not self.aborted:  # one end reset or vanished: reset the other
            self.core.resets += 1
            self.abort(count=False)
        if self.aborted:
            await asyncio.gather(*self.tasks, return_exceptions=True)
            return
        self.client.close()
        upstream.close()

    def abort(self, *, count: bool = True) -> None:
        """Reset both sides now."""
        if self.aborted:
            return
        self.aborted = True
        if count:
            self.core.resets += 1
        for t in self.tasks:
            t.cancel()
        self.client.reset()
        if self.upstream is not None:
            self.upstream.reset()


class _Core:
    """All the state that lives on the event loop."""

    def __init__(self, upstream: Address, listen: Address, profile: LinkProfile, seed: int | None) -> None:
        self.upstream = upstream
        self.listen = listen
        self.profile = profile
        self.rng = random.Random(seed)
        self.links = {d: _Link(profile.direction(d)) for d in Direction}
        self.conns: set[_Connection] = set()
        self.handlers: set[asyncio.Task[None]] = set()
        self.sock: socket.socket | None = None
        self.server: asyncio.Server | None = None
        self.serve_task: asyncio.Task[None] | None = None
        self.trace_task: asyncio.Task[None] | None = None
        self.connections = self.upstream_failures = self.resets = 0
        self.address: Address = listen

    async def start(self) -> None:
        self.sock = self._bind(self.listen[1])
        host, port = self.sock.getsockname()[:2]
        self.address = (host, port)
        if not self.profile.offline:
            self.sock.listen(BACKLOG)
            await self._serve(self.sock)

    def _bind(self, port: int) -> socket.socket:
        host = self.listen[0]
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        sock.setblocking(False)
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Endpoint(self._on_client), sock=sock, backlog=BACKLOG)

    def _on_client(self, client: _Endpoint) -> None:
        conn = _Connection(self, client)
        self.connections += 1
        if self.profile.offline:  # accepted from the backlog just before going offline
            conn.abort()
            return
        self.conns.add(conn)
        task = asyncio.get_running_loop().create_task(self._handle(conn))
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)

    async def _handle(self, conn: _Connection) -> None:
        try:
            await conn.run()
        except Exception:  # one broken connection must not take the proxy down
            _log.warning("link emulator: connection failed", exc_info=True)
            conn.abort()
        finally:
            self.conns.discard(conn)

    def apply(self, profile: LinkProfile) -> None:
        was_offline = self.profile.offline
        self.profile = profile
        for d, link in self.links.items():
            link.set_params(profile.direction(d))
        if profile.offline and not was_offline:
            self._go_offline()
        elif was_offline and not profile.offline:
            assert self.sock is not None
            self.sock.listen(BACKLOG)  # connects queue from now on, before the server task runs
            self.serve_task = asyncio.get_running_loop().create_task(self._serve(self.sock))

    def _go_offline(self) -> None:
        # A bound socket that does not listen: connect() gets ECONNREFUSED, the port stays ours.
        if self.serve_task is not None:
            self.serve_task.cancel()
            self.serve_task = None
        self._close_listener()
        for conn in list(self.conns):
            conn.abort()
        self.sock = self._bind(self.address[1])

    def _close_listener(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def set_profile(self, profile: LinkProfile) -> None:
        self._stop_trace()
        self.apply(profile)

    def play_trace(self, trace: LinkTrace, base: LinkProfile) -> None:
        self._stop_trace()
        self.trace_task = asyncio.get_running_loop().create_task(self._run_trace(trace, base))

    def _stop_trace(self) -> None:
        if self.trace_task is not None:
            self.trace_task.cancel()
            self.trace_task = None

    async def _run_trace(self, trace: LinkTrace, base: LinkProfile) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        name = f"{base.name}+trace"
        t = 0.0
        while True:
            self.apply(trace.at(t).apply(base).replace(name=name))
            nxt = trace.next_change(t)
            if nxt is None:
                return
            await _sleep_until(loop, t0 + nxt)
            t = max(loop.time() - t0, nxt)  # _sleep_until may return up to TIMER_SLACK_S early

    def stats(self) -> LinkStats:
        return LinkStats(self.profile, self.links[Direction.UP].stats(), self.links[Direction.DOWN].stats(),
                         self.connections, len(self.conns), self.upstream_failures, self.resets)

    async def close(self) -> None:
        self._stop_trace()
        if self.serve_task is not None:
            self.serve_task.cancel()
        self._close_listener()
        for conn in list(self.conns):
            conn.abort()
        for task in list(self.handlers):  # e.g. one still waiting out a handshake
            task.cancel()
        if self.handlers:
            await asyncio.gather(*self.handlers, return_exceptions=True)
        await asyncio.sleep(0)  # let the aborted transports run their close callbacks


# --- the public face -----------------------------------------------------------


class LinkEmulator:
    """A shaping TCP proxy: ``listen`` -> ``upstream``, with a live-switchable link profile.

    ``upstream`` is where connections go (``(host, port)`` or ``"host:port"``);
    ``listen`` defaults to an ephemeral port on 127.0.0.1 (see :attr:`address`).
    ``seed`` makes jitter and loss reproducible. ``trace`` starts replaying a
    trace on top of ``profile`` (which supplies the jitter) as soon as it starts.

    Sync code calls :meth:`start` / :meth:`stop` (or uses ``with``): the proxy
    then runs its own event loop in a background thread. Async code awaits
    :meth:`astart` / :meth:`aclose` (or uses ``async with``) on its own loop.
    :meth:`set_profile`, :meth:`play_trace` and :meth:`stats` work from any thread.
    """

    def __init__(self, upstream: Address | str, profile: LinkProfile | str = "datacenter", *,
                 listen: Address | str = ("127.0.0.1", 0), seed: int | None = None,
                 trace: LinkTrace | None = None) -> None:
        self._upstream = parse_address(upstream) if isinstance(upstream, str) else upstream
        self._listen = parse_address(listen) if isinstance(listen, str) else listen
        self._profile = get_profile(profile) if isinstance(profile, str) else profile
        self._seed = seed
        self._trace = trace
        self._core: _Core | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._own_loop = False

    # -- properties

    @property
    def address(self) -> Address:
        """Where clients connect: ``(host, port)`` (the real port once started)."""
        return self._core.address if self._core is not None else self._listen

    @property
    def hostport(self) -> str:
        """:attr:`address` as ``HOST:PORT``, the form node configs and data-plane clients take."""
        host, port = self.address
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def upstream(self) -> Address:
        return self._upstream

    @property
    def profile(self) -> LinkProfile:
        """The profile in force now (a trace changes it as it plays)."""
        return self._core.profile if self._core is not None else self._profile

    # -- async life cycle

    async def astart(self) -> LinkEmulator:
        """Start listening on the running event loop."""
        if self._core is not None:
            raise TransportError("link emulator already started")
        core = _Core(self._upstream, self._listen, self._profile, self._seed)
        self._loop = asyncio.get_running_loop()
        await core.start()
        self._core = core
        if self._trace is not None:
            core.play_trace(self._trace, self._profile)
        return self

    async def aclose(self) -> None:
        """Stop listening and reset every connection through the link."""
        core, self._core = self._core, None
        if core is not None:
            self._profile = core.profile
            await core.close()

    async def __aenter__(self) -> LinkEmulator:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- sync life cycle (background thread)

    def start(self) -> LinkEmulator:
        """Start the proxy on its own event loop thread; returns once it listens."""
        if self._thread is not None or self._core is not None:
            raise TransportError("link emulator already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tierflow-linkemu", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.astart(), loop).result(_CROSS_THREAD_TIMEOUT_S)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = None
            raise
        self._thread, self._own_loop = thread, True
        return self

    def stop(self) -> None:
        """Stop the proxy and its thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(_CROSS_THREAD_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._thread = self._loop = None

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- live control

    def set_profile(self, profile: LinkProfile | str) -> None:
        """Switch the link to ``profile`` now (stops a playing trace). Bytes already on the
        wire keep their timing; the next segment uses the new figures."""
        p = get_profile(profile) if isinstance(profile, str) else profile
        if self._core is None:
            self._profile = p
            return
        self._on_loop(lambda core: core.set_profile(p))

    def play_trace(self, trace: LinkTrace, base: LinkProfile | str | None = None) -> None:
        """Replay ``trace`` from now on; ``base`` (default: the current profile) supplies the jitter."""
        b = get_profile(base) if isinstance(base, str) else (base or self.profile)
        if self._core is None:
            self._trace, self._profile = trace, b
            return
        self._on_loop(lambda core: core.play_trace(trace, b))

    def stats(self) -> LinkStats:
        """Counters since start: bytes, segments and losses per direction, connections, profile."""
        if self._core is None:
            raise TransportError("link emulator is not running")
        return self._on_loop(lambda core: core.stats())

    def _on_loop(self, fn: Callable[[_Core], T]) -> T:
        """Run ``fn(core)`` on the emulator's loop and return its result, from any thread."""
        core, loop = self._core, self._loop
        assert core is not None and loop is not None
        if _running_loop() is loop:
            return fn(core)
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                fut.set_result(fn(core))
            except BaseException as exc:  # handed back to the calling thread
                fut.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return fut.result(_CROSS_THREAD_TIMEOUT_S)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
