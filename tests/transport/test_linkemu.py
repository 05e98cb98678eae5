"""The link emulator on real loopback sockets: timing, order, loss, outages, live changes.

Every test talks to a real upstream server (echo, source or sink) through a
real :class:`LinkEmulator`. A timing figure must be on schedule (:func:`on_schedule`): never early,
and late by no more than 10 % plus 10 ms -- the emulator's timers run on a shared two-core host,
whose bursts of load made a 440 ms ping 18 ms late in one CI run. The tests that need more than
two seconds are marked slow.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest

from tierflow.errors import ConfigError, TransportError
from tierflow.transport.linkemu import MSS, LinkEmulator, LossModel, parse_address, rto_s, segment_size
from tierflow.transport.profiles import parse_trace
from tierflow.types.links import Direction, LinkProfile, get_profile

# --- upstream servers --------------------------------------------------------


@contextmanager
def serve(handler: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    """A threaded TCP server on an ephemeral loopback port; ``handler`` runs per connection."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def run(c: socket.socket) -> None:
        try:
            handler(c)
        except OSError:
            pass  # the emulator reset the connection: part of several tests
        finally:
            c.close()

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=run, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield srv.getsockname()[:2]
    finally:
        srv.close()
        for c in conns:
            c.close()


def echo(c: socket.socket) -> None:
    while data := c.recv(1 << 16):
        c.sendall(data)


def source(nbytes: int) -> Callable[[socket.socket], None]:
    """On every byte received, send ``nbytes`` back; a ``h`` (see :func:`handshake`) comes back as it is."""

    def handle(c: socket.socket) -> None:
        block = os.urandom(min(nbytes, 1 << 20))
        while byte := c.recv(1):
            if byte == b"h":
                c.sendall(byte)
                continue
            left = nbytes
            while left:
                n = min(left, len(block))
                c.sendall(block[:n])
                left -= n

    return handle


class Sink:
    """Records when each received chunk arrived."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, int]] = []
        self.first = threading.Event()  # a first chunk arrived
        self.done = threading.Event()

    def __call__(self, c: socket.socket) -> None:
        while data := c.recv(1 << 16):
            self.chunks.append((time.perf_counter(), len(data)))
            self.first.set()
        self.done.set()

    @property
    def total(self) -> int:
        return sum(n for _, n in self.chunks)


_CLIENTS: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def connect(link: LinkEmulator, timeout: float = 10.0) -> socket.socket:
    """A client connection through ``link`` (closed after the test)."""
    s = socket.create_connection(link.address, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _CLIENTS.append(s)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def handshake(s: socket.socket) -> None:
    """A byte there and back (echo or :func:`source`): the emulated TCP handshake is over, so what is
    timed next is the transfer alone."""
    s.sendall(b"h")
    assert recv_exactly(s, 1) == b"h"


def ping(s: socket.socket) -> float:
    t = time.perf_counter()
    s.sendall(b"p")
    assert s.recv(1) == b"p"
    return time.perf_counter() - t


def pings(s: socket.socket, n: int) -> list[float]:
    return [ping(s) for _ in range(n)]


def quiet(profile: str | LinkProfile, **changes: float) -> LinkProfile:
    """A profile without jitter and loss (plus ``changes``): timing exact up to the timer."""
    p = get_profile(profile) if isinstance(profile, str) else profile
    return p.replace(**{"jitter_s": 0.0, "loss": 0.0, **changes})


LATE_REL, LATE_ABS = 0.10, 0.010  # how late the shared host may run the emulator's timers
EARLY = 0.02  # a timer's rounding; the emulator holds bytes at least as long as the schedule says


def on_schedule(measured: float, expected: float, *, spread: float = EARLY) -> bool:
    """``measured`` is at most ``spread`` early and at most 10 % + 10 ms late (``spread``: a fraction
    of ``expected``, larger where jitter moves figures both ways)."""
    return expected * (1 - spread) <= measured <= expected * (1 + LATE_REL) + LATE_ABS


FAST = LinkProfile(name="fast", down_bps=400e6, up_bps=400e6, rtt_s=0.002)


# --- basics --------------------------------------------------------------------


def test_bytes_pass_unchanged_both_ways_and_are_counted() -> None:
    payload = os.urandom(3_000_000)
    with serve(echo) as up, LinkEmulator(up, "datacenter", seed=1) as link:
        s = connect(link)
        threading.Thread(target=s.sendall, args=(payload,), daemon=True).start()
        assert recv_exactly(s, len(payload)) == payload
        s.close()
        stats = link.stats()
    assert stats.up.bytes == stats.down.bytes == len(payload)
    assert stats.connections == 1
    assert stats.profile.name == "datacenter"


def test_half_close_reaches_upstream_and_the_reply_comes_back() -> None:
    def reverse(c: socket.socket) -> None:
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        c.sendall(data[::-1])  # only possible once the client's EOF arrived

    with serve(reverse) as up, LinkEmulator(up, FAST) as link:
        s = connect(link)
        s.sendall(b"abcdef")
        s.shutdown(socket.SHUT_WR)
        assert recv_exactly(s, 6) == b"fedcba"
        assert s.recv(1) == b""  # then EOF


def test_order_is_preserved_byte_exact_under_heavy_jitter_and_loss() -> None:
    # Jitter (sd 8 ms) far above the segment spacing (~1 ms) would reorder segments
    # if they were delivered by their own arrival times; loss stalls add gaps.
    profile = LinkProfile(name="jittery", down_bps=100e6, up_bps=100e6, rtt_s=0.02, jitter_s=0.008,
                          loss=0.002)
    rng = random.Random(7)
    payload = rng.randbytes(1_500_000)
    with serve(echo) as up, LinkEmulator(up, profile, seed=3) as link:
        s = connect(link)

        def send_in_odd_pieces() -> None:
            i = 0
            while i < len(payload):
                n = rng.choice((1, 7, 100, 1460, 5000, 65536))
                s.sendall(payload[i:i + n])
                i += n

        threading.Thread(target=send_in_odd_pieces, daemon=True).start()
        assert recv_exactly(s, len(payload)) == payload
        stats = link.stats()
    least = len(payload) // segment_size(profile.up_bps)  # many segments, each with its own delay
    assert stats.up.segments >= least and stats.down.segments >= least


def test_many_connections_at_once() -> None:
    with serve(echo) as up, LinkEmulator(up, FAST) as link:
        socks = [connect(link) for _ in range(20)]
        for i, s in enumerate(socks):
            s.sendall(bytes([i]) * 1000)
        for i, s in enumerate(socks):
            assert recv_exactly(s, 1000) == bytes([i]) * 1000
        assert link.stats().active == 20
        for s in socks:
            s.close()


# --- timing against the profile -------------------------------------------------


@pytest.mark.parametrize("name", ["3g", "4g", "5g"])
def test_median_ping_matches_the_profile_rtt(name: str) -> None:
    profile = quiet(name)  # jitter and loss have their own tests
    with serve(echo) as up, LinkEmulator(up, profile, seed=11) as link:
        s = connect(link)
        ping(s)  # includes the handshake
        rtt = statistics.median(pings(s, 7))
    assert on_schedule(rtt, profile.rtt_s), rtt


def test_jitter_spreads_the_rtt_around_the_profile_value() -> None:
    profile = quiet("4g", rtt_s=0.1, jitter_s=0.005)
    with serve(echo) as up, LinkEmulator(up, profile, seed=12) as link:
        s = connect(link)
        ping(s)
        samples = pings(s, 15)
    # Each way adds N(0, 5 ms): the RTT spreads with sd sqrt(2) * 5 ms around 100 ms. The
    # median of 15 has a standard error of ~2.3 ms, so 10 % early is a margin of four of them.
    assert on_schedule(statistics.median(samples), profile.rtt_s, spread=0.10), samples
    q1, _, q3 = statistics.quantiles(samples, n=4)
    spread = (q3 - q1) / 1.349  # the sd from the quartiles: one late sample of a loaded host barely moves it
    assert spread == pytest.approx(2**0.5 * profile.jitter_s, rel=0.5), samples


def test_the_handshake_costs_one_rtt() -> None:
    profile = quiet("4g", rtt_s=0.06)
    with serve(echo) as up, LinkEmulator(up, profile) as link:
        t = time.perf_counter()
        s = connect(link)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        first = time.perf_counter() - t
        second = ping(s)
    assert on_schedule(first, 2 * profile.rtt_s), first
    assert on_schedule(second, profile.rtt_s), second


def _download_time(link: LinkEmulator, nbytes: int) -> float:
    """Seconds from asking for ``nbytes`` on an open connection to holding the last of them."""
    s = connect(link, timeout=30)
    handshake(s)  # the handshake is not part of the transfer
    t = time.perf_counter()
    s.sendall(b"g")
    recv_exactly(s, nbytes)
    return time.perf_counter() - t


@pytest.mark.slow
@pytest.mark.parametrize(("name", "seconds"), [("3g", 1.2), ("4g", 1.0)])
def test_download_takes_rtt_plus_size_over_bandwidth_plus_loss_stalls(name: str, seconds: float) -> None:
    profile = get_profile(name)  # jitter and loss as named
    nbytes = int(profile.down_bps * seconds / 8)
    with serve(source(nbytes)) as up, LinkEmulator(up, profile, seed=5) as link:
        s = connect(link, timeout=30)
        handshake(s)  # the handshake is not part of the transfer
        before = link.stats()
        t = time.perf_counter()
        s.sendall(b"g")
        recv_exactly(s, nbytes)
        took = time.perf_counter() - t
        after = link.stats()
    stalls = (after.down.stall_s - before.down.stall_s) + (after.up.stall_s - before.up.stall_s)
    expected = profile.rtt_s + nbytes * 8 / profile.down_bps + stalls
    assert on_schedule(took, expected, spread=0.10), (took, expected)  # jitter: either way


@pytest.mark.slow
@pytest.mark.parametrize(("name", "seconds"), [("3g", 1.2), ("4g", 1.0)])
def test_upload_takes_delay_plus_size_over_bandwidth_plus_loss_stalls(name: str, seconds: float) -> None:
    profile = get_profile(name)
    nbytes = int(profile.up_bps * seconds / 8)
    sink = Sink()
    with serve(sink) as up, LinkEmulator(up, profile, seed=5) as link:
        s = connect(link, timeout=30)
        s.sendall(b"h")  # let the handshake finish before timing: a byte has crossed
        assert sink.first.wait(30)
        before = link.stats().up.stall_s
        t = time.perf_counter()
        s.sendall(os.urandom(nbytes))
        s.shutdown(socket.SHUT_WR)
        assert sink.done.wait(30)
        took = sink.chunks[-1][0] - t
        stalls = link.stats().up.stall_s - before
    assert sink.total == nbytes + 1
    expected = profile.rtt_s / 2 + nbytes * 8 / profile.up_bps + stalls
    assert on_schedule(took, expected, spread=0.10), (took, expected)  # jitter: either way


def test_connections_share_the_link_bandwidth() -> None:
    profile = quiet("4g", down_bps=16e6, rtt_s=0.01)
    nbytes = 600_000
    with serve(source(nbytes)) as up, LinkEmulator(up, profile) as link:
        socks = [connect(link) for _ in range(2)]
        for s in socks:  # both handshakes are over before the clock starts
            handshake(s)
        t = time.perf_counter()
        for s in socks:
            s.sendall(b"g")
        threads = [threading.Thread(target=recv_exactly, args=(s, nbytes)) for s in socks]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
    # Two transfers over one 16 Mbit/s link take the sum of their bytes over the link rate.
    assert on_schedule(took, profile.rtt_s + 2 * nbytes * 8 / profile.down_bps), took


# --- loss --------------------------------------------------------------------------


def test_loss_model_loses_the_stated_fraction_and_classifies_tail_losses() -> None:
    model = LossModel(random.Random(1))
    fast = slow = 0
    for _ in range(20_000):  # 20 000 segments of 50 packets with plenty behind them
        f, s = model.segment(50 * MSS, 10 * MSS, 0.01)
        fast, slow = fast + f, slow + s
    assert (fast + slow) / 1_000_000 == pytest.approx(0.01, rel=0.03)
    assert slow == 0  # always >= 3 packets behind: every loss is a fast retransmit

    lone = LossModel(random.Random(2))
    results = [lone.segment(1, 0, 0.3) for _ in range(10_000)]
    assert all(f == 0 for f, _ in results)  # a 1-byte message has nothing behind it
    assert sum(s for _, s in results) / 10_000 == pytest.approx(0.3, rel=0.05)
    assert LossModel(random.Random(3)).segment(10 * MSS, 0, 0.0) == (0, 0)


@pytest.mark.slow
def test_a_lost_ping_arrives_one_rto_late() -> None:
    profile = quiet("4g", rtt_s=0.04, down_bps=50e6, up_bps=50e6, loss=0.2)
    rto = rto_s(profile.direction(Direction.UP))
    assert rto == pytest.approx(0.2)  # the 200 ms floor: RTT is short
    with serve(echo) as up, LinkEmulator(up, profile, seed=4) as link:
        s = connect(link)
        ping(s)
        before = link.stats()
        samples = pings(s, 12)
        after = link.stats()
    timeouts = (after.up.timeouts - before.up.timeouts) + (after.down.timeouts - before.down.timeouts)
    assert after.up.fast_retransmits == after.down.fast_retransmits == 0
    late = [round((x - profile.rtt_s) / rto) for x in samples]
    assert sum(late) == timeouts >= 1  # every counted timeout shows up as one RTO
    for x, k in zip(samples, late, strict=True):
        assert on_schedule(x, profile.rtt_s + k * rto), samples


def test_bulk_loss_costs_one_rtt_per_lost_packet() -> None:
    lossless = quiet("4g", down_bps=50e6, rtt_s=0.02)
    lossy = lossless.replace(loss=0.01)
    nbytes = 800_000
    with serve(source(nbytes)) as up:
        with LinkEmulator(up, lossless) as link:
            clean = _download_time(link, nbytes)
        with LinkEmulator(up, lossy, seed=9) as link:
            before = link.stats().down
            took = _download_time(link, nbytes)
            after = link.stats().down
    assert on_schedule(clean, lossless.rtt_s + nbytes * 8 / lossless.down_bps), clean
    packets = nbytes // MSS
    assert 1 <= after.lost_packets <= 4 * packets * lossy.loss  # both transfers counted
    assert after.fast_retransmits > 0 and after.stall_s > before.stall_s
    # Each loss stalls the connection one RTT (fast retransmit) plus the resend.
    per_loss = lossy.rtt_s + MSS * 8 / lossy.down_bps
    assert after.stall_s == pytest.approx(after.fast_retransmits * per_loss + after.timeouts * 0.2, rel=1e-6)
    assert took > clean


# --- offline, outages, failures ------------------------------------------------------


def test_offline_refuses_and_coming_back_online_accepts_on_the_same_port() -> None:
    with serve(echo) as up, LinkEmulator(up, "offline") as link:
        port = link.port
        assert port != 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(link.address, timeout=2)
        link.set_profile(FAST)
        assert link.port == port
        s = connect(link)
        s.sendall(b"hi")
        assert recv_exactly(s, 2) == b"hi"


def test_going_offline_resets_open_connections_and_refuses_new_ones() -> None:
    with serve(echo) as up, LinkEmulator(up, FAST) as link:
        s = connect(link)
        assert ping(s) < 0.5
        link.set_profile("offline")
        with pytest.raises(ConnectionResetError):
            s.sendall(b"x")
            s.recv(1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(link.address, timeout=2)
        assert link.stats().resets >= 1
        link.set_profile(FAST)
        s2 = connect(link)
        assert ping(s2) < 0.5


def test_an_outage_holds_the_bytes_until_the_link_returns() -> None:
    with serve(echo) as up, LinkEmulator(up, FAST) as link:
        s = connect(link, timeout=0.3)
        ping(s)
        link.set_profile(FAST.replace(name="tunnel", down_bps=0.0, up_bps=0.0))
        s.sendall(b"held")
        with pytest.raises(TimeoutError):
            s.recv(4)
        link.set_profile(FAST)
        s.settimeout(5)
        assert recv_exactly(s, 4) == b"held"


def test_a_refusing_upstream_closes_the_client_connection() -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    addr = dead.getsockname()[:2]
    dead.close()
    with LinkEmulator(addr, FAST) as link:
        s = connect(link, timeout=5)
        with suppress(ConnectionResetError):  # a reset or a plain close: either is fine
            assert s.recv(1) == b""
        deadline = time.monotonic() + 2
        while link.stats().upstream_failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.stats().upstream_failures == 1


def test_an_upstream_reset_reaches_the_client() -> None:
    def reset_at_once(c: socket.socket) -> None:
        c.recv(1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with serve(reset_at_once) as up, LinkEmulator(up, FAST) as link:
        s = connect(link, timeout=5)
        s.sendall(b"x")
        with pytest.raises((ConnectionResetError, EOFError)):
            recv_exactly(s, 1)


# --- live changes ----------------------------------------------------------------------


def test_switching_the_profile_changes_rtt_on_an_open_connection() -> None:
    with serve(echo) as up, LinkEmulator(up, quiet("4g")) as link:
        s = connect(link)
        ping(s)
        assert on_schedule(statistics.median(pings(s, 5)), 0.05)
        link.set_profile(quiet("3g"))
        assert link.profile.name == "3g"
        assert on_schedule(statistics.median(pings(s, 5)), 0.15)
        link.set_profile(quiet("4g").scaled(rtt=0.2))
        assert on_schedule(statistics.median(pings(s, 5)), 0.01)


@pytest.mark.slow
def test_trace_replay_changes_bandwidth_over_time() -> None:
    trace = parse_trace("time_s,down_mbps,up_mbps,rtt_ms,loss\n0,8,1,10,0\n1.0,2,1,10,0\n")
    with serve(source(10_000_000)) as up, LinkEmulator(up, quiet("4g")) as link:
        s = connect(link)
        link.play_trace(trace)
        t0 = time.perf_counter()
        s.sendall(b"g")
        got: list[tuple[float, int]] = []
        while (now := time.perf_counter() - t0) < 1.9:
            got.append((now, len(s.recv(1 << 16))))
        assert link.profile.name == "4g+trace"
        assert link.profile.down_bps == 2e6

    def rate(a: float, b: float) -> float:
        return sum(n for t, n in got if a <= t < b) * 8 / (b - a)

    assert rate(0.3, 0.9) == pytest.approx(8e6, rel=0.10)
    assert rate(1.2, 1.9) == pytest.approx(2e6, rel=0.10)


def test_a_trace_given_at_construction_starts_with_the_emulator() -> None:
    trace = parse_trace("0,3,2,30,0\n")
    with serve(echo) as up, LinkEmulator(up, "4g", trace=trace) as link:
        p = link.profile
        assert (p.down_bps, p.up_bps, p.rtt_s, p.jitter_s) == (3e6, 2e6, 0.03, get_profile("4g").jitter_s)
        link.set_profile("wifi")  # a manual change stops the trace
        assert link.profile.name == "wifi"


# --- API surface -------------------------------------------------------------------------


def test_async_use_on_the_callers_event_loop() -> None:
    async def main(up: tuple[str, int]) -> tuple[bytes, int]:
        async with LinkEmulator(up, quiet("4g", rtt_s=0.02)) as link:
            reader, writer = await asyncio.open_connection(*link.address)
            writer.write(b"ping")
            first = await reader.readexactly(4)
            link.set_profile(FAST)  # same thread as the loop: applied directly
            writer.write(b"pong")
            await reader.readexactly(4)
            writer.close()
            await writer.wait_closed()
            return first, link.stats().up.bytes

    with serve(echo) as up:
        first, sent = asyncio.run(main(up))
    assert first == b"ping"
    assert sent == 8


def test_life_cycle_errors_and_addresses() -> None:
    link = LinkEmulator("127.0.0.1:9", "4g")
    assert link.upstream == ("127.0.0.1", 9)
    assert link.profile.name == "4g"
    with pytest.raises(TransportError, match="not running"):
        link.stats()
    link.set_profile("3g")  # before start: just remembered
    link.start()
    try:
        assert link.profile.name == "3g"
        with pytest.raises(TransportError, match="already started"):
            link.start()
    finally:
        link.stop()
    link.stop()  # idempotent
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("nohost", "h:port", "h:70000"):
        with pytest.raises(ConfigError):
            parse_address(bad)
    with pytest.raises(ConfigError):
        LinkEmulator("127.0.0.1:9", "6g")


def test_segment_size_keeps_shaping_smooth() -> None:
    assert segment_size(240e3) == MSS  # slow links: one packet at a time
    assert segment_size(30e6) == 7500  # 2 ms of airtime
    assert segment_size(1e9) == 64 * 1024
    assert segment_size(float("inf")) == 64 * 1024
