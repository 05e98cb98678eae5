"""Round-trip overhead of the secure data plane between two processes on loopback.

:func:`measure_loopback_overhead` spawns this module as an echo server process (``serve``), then
from this process times, one request at a time:

* ``tcp_rtt_ms`` -- a bare TCP ping-pong of the same payload (blocking sockets, TCP_NODELAY, a
  thread echoing on the other side): what the kernel's loopback costs;
* ``tls_rtt_ms`` -- the same bytes echoed as one length-prefixed message on a mutual-TLS asyncio
  stream with no tierflow layer (a breakdown: what the transport the data plane runs on costs);
* ``loopback_rtt_ms`` -- a :class:`StageRequest` with one tensor of that size (float32, raw)
  echoed through :class:`DataPlaneServer` / :class:`DataPlaneClient`: sealed header and tensor
  frames, request ids, metrics;
* ``sync_rtt_ms`` -- the same through :class:`SyncDataPlaneClient` from a plain thread.

``loopback_rtt_overhead_ms = loopback_rtt_ms - tcp_rtt_ms``: the framework's cost per round trip.
Every figure is a median over ``n`` round trips after a warm-up.

Run: ``python -m tierflow.bench.dataplane [--n 2000] [--payload-bytes 1024]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.errors import InvalidInputError, TransportError
from tierflow.transport.certs import init_pki
from tierflow.transport.dataplane import (
    DataPlaneClient,
    DataPlaneServer,
    SyncDataPlaneClient,
)
from tierflow.transport.lane import LaneClient, LaneServer
from tierflow.transport.loop import run
from tierflow.transport.messages import ErrorCode, PeerInfo, StageRequest, StageResponse
from tierflow.transport.stream import StreamClosed, read_message, write_message
from tierflow.transport.tls import client_ssl_context, load_identity, server_ssl_context
from tierflow.types import Tier

_WARMUP = 100
_ROUND = 50  # round trips per path before switching to the next one
_SERVER_START_TIMEOUT_S = 60.0


async def echo_handler(request: StageRequest, peer: PeerInfo) -> StageResponse:
    """``echo``: the inputs back (only ``outputs`` if named) with the meta; ``fail``: a typed error."""
    if request.op == "echo":
        names = request.outputs or list(request.inputs)
        missing = [n for n in names if n not in request.inputs]
        if missing:
            return StageResponse.failure(
                request.request_id, ErrorCode.INVALID_INPUT, f"no input named {missing[0]}"
            )
        return StageResponse(
            request.request_id,
            outputs={n: request.inputs[n] for n in names},
            meta={**request.meta, "peer": peer.name, "session": peer.session_id},
        )
    if request.op == "fail":
        raise InvalidInputError(str(request.meta.get("message", "asked to fail")))
    return StageResponse.failure(request.request_id, ErrorCode.UNKNOWN_OP, f"unknown op {request.op!r}")


# --- the server process -------------------------------------------------------------------------


def _tcp_echo(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_tcp_echo_conn, args=(conn,), daemon=True).start()


def _tcp_echo_conn(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


async def _tls_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            write_message(writer, await read_message(reader, 1 << 30))
            await writer.drain()
    except (StreamClosed, ConnectionError):
        writer.close()


def lane_echo(request: StageRequest, peer: PeerInfo) -> StageResponse:
    """The decode lane's echo (transport/lane.py): the inputs and meta back."""
    return StageResponse(request.request_id, outputs=dict(request.inputs), meta=dict(request.meta))


async def serve(pki: Path, name: str = Tier.CLOUD, host: str = "127.0.0.1") -> None:
    """Echo servers for the benchmark and multi-process tests; prints one JSON line of ports, runs until
    stdin closes."""
    identity = load_identity(pki, name)
    server = DataPlaneServer(identity, echo_handler)
    port = await server.start(f"{host}:0")
    raw = await asyncio.start_server(_tls_echo, host, 0, ssl=server_ssl_context(identity))
    raw_port = raw.sockets[0].getsockname()[1]
    listener = socket.create_server((host, 0))
    threading.Thread(target=_tcp_echo, args=(listener,), daemon=True).start()
    lane = LaneServer(identity, lane_echo)
    ports = {"port": port, "tls_port": raw_port, "tcp_port": listener.getsockname()[1]}
    print(json.dumps({**ports, "lane_port": lane.start(host), "pid": os.getpid()}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the parent closes our stdin to stop us
    lane.stop()
    listener.close()
    raw.close()
    await server.stop(None)


class EchoServerProcess:
    """``serve`` in a child process; ``with EchoServerProcess(pki) as p: p.port ...``."""

    def __init__(self, pki: Path, name: str = Tier.CLOUD) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tierflow.bench.dataplane", "serve", str(pki), "--name", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        ports = self._read_ports()
        self.port: int = ports["port"]
        self.tls_port: int = ports["tls_port"]
        self.tcp_port: int = ports["tcp_port"]
        self.lane_port: int = ports["lane_port"]
        self.pid: int = ports["pid"]

    def _read_ports(self) -> dict[str, int]:
        assert self.proc.stdout is not None
        result: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: result.update(line=self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(_SERVER_START_TIMEOUT_S)
        line = result.get("line", b"")
        if not line:
            self.close()
            raise TransportError("the echo server process did not start")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EchoServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the measuring side -------------------------------------------------------------------------


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _tcp_round_trip(sock: socket.socket, payload: bytes, buf: bytearray) -> None:
    sock.sendall(payload)
    view, got = memoryview(buf), 0
    while got < len(payload):
        k = sock.recv_into(view[got:])
        if not k:
            raise TransportError("the tcp echo closed the connection")
        got += k


async def _measure(server: EchoServerProcess, pki: Path, x: np.ndarray, n: int) -> dict[str, list[float]]:
    """TCP, bare TLS and the data plane connected at once and timed in alternating rounds, so changes in
    the machine's load hit them alike; then the sync client alone.

    The bare TCP round trips block this loop's thread on purpose: nothing else runs on it meanwhile.
    """
    payload = x.tobytes()
    device = load_identity(pki, Tier.DEVICE)
    samples: dict[str, list[float]] = {"tcp": [], "tls": [], "dataplane": [], "lane": [], "sync": []}
    lane = LaneClient(f"127.0.0.1:{server.lane_port}", device, Tier.CLOUD)
    lane.connect()
    with socket.create_connection(("127.0.0.1", server.tcp_port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(len(payload))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.tls_port, ssl=client_ssl_context(device), server_hostname=Tier.CLOUD.value
        )
        async with DataPlaneClient(f"127.0.0.1:{server.port}", device, Tier.CLOUD) as client:
            request = StageRequest("echo", inputs={"x": x})

            async def tls_round_trip() -> None:
                write_message(writer, payload)
                await writer.drain()
                await read_message(reader, len(payload))

            async def dataplane_round_trip() -> None:
                (await client.call(request)).raise_for_error()

            async def lane_round_trip() -> None:  # blocks this loop's thread, as an entry point's lone step
                reply = lane.try_call(StageRequest("echo", inputs={"x": x}))
                if reply is None:
                    raise TransportError("the lane was busy")
                reply.raise_for_error()

            try:
                rounds = max(1, -(-(n + _WARMUP) // _ROUND))
                for r in range(rounds):
                    keep = r * _ROUND >= _WARMUP
                    for _ in range(_ROUND):
                        start = time.perf_counter()
                        _tcp_round_trip(sock, payload, buf)
                        if keep:
                            samples["tcp"].append(time.perf_counter() - start)
                    trips = (
                        ("tls", tls_round_trip),
                        ("dataplane", dataplane_round_trip),
                        ("lane", lane_round_trip),
                    )
                    for name, round_trip in trips:
                        for _ in range(_ROUND):
                            start = time.perf_counter()
                            await round_trip()
                            if keep:
                                samples[name].append(time.perf_counter() - start)
            finally:
                writer.close()
                lane.close()
    # The sync client runs its own event loop thread: measured alone, after the others are closed.
    with SyncDataPlaneClient(f"127.0.0.1:{server.port}", device, Tier.CLOUD) as sync_client:
        for i in range(n + _WARMUP):
            start = time.perf_counter()
            sync_client.call(request).raise_for_error()
            if i >= _WARMUP:
                samples["sync"].append(time.perf_counter() - start)
    return samples


def measure_loopback_overhead(n: int = 2000, payload_bytes: int = 1024) -> dict[str, float | int]:
    """Median round trips (ms) of a ``payload_bytes`` echo: bare TCP, bare mTLS, the data plane.

    Returns ``loopback_rtt_ms``, ``tcp_rtt_ms``, ``loopback_rtt_overhead_ms`` (their difference),
    ``tls_rtt_ms``, ``lane_rtt_ms`` (the same echo over a decode lane), ``sync_rtt_ms``,
    ``loopback_rtt_p90_ms``, ``n`` and ``payload_bytes``.
    """
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, got {n}")
    if payload_bytes < 4 or payload_bytes % 4:
        raise InvalidInputError(f"payload_bytes must be a positive multiple of 4, got {payload_bytes}")
    x = np.random.default_rng(0).standard_normal(payload_bytes // 4).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="tierflow-bench-") as tmp:
        pki = Path(tmp)
        init_pki(pki, [Tier.CLOUD, Tier.DEVICE])
        with EchoServerProcess(pki) as server:
            samples = run(_measure(server, pki, x, n))
    loopback, tcp_ms = _median_ms(samples["dataplane"]), _median_ms(samples["tcp"])
    return {
        "loopback_rtt_ms": round(loopback, 4),
        "tcp_rtt_ms": round(tcp_ms, 4),
        "loopback_rtt_overhead_ms": round(loopback - tcp_ms, 4),
        "tls_rtt_ms": round(_median_ms(samples["tls"]), 4),
        "lane_rtt_ms": round(_median_ms(samples["lane"]), 4),
        "sync_rtt_ms": round(_median_ms(samples["sync"]), 4),
        "loopback_rtt_p90_ms": round(float(np.percentile(samples["dataplane"], 90)) * 1e3, 4),
        "n": len(samples["dataplane"]),
        "payload_bytes": payload_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tierflow.bench.dataplane", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command")
    serve_p = sub.add_parser("serve", help="run the echo servers (used by the benchmark and tests)")
    serve_p.add_argument("pki", type=Path)
    serve_p.add_argument("--name", default=Tier.CLOUD.value)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.command == "serve":
        run(serve(args.pki, args.name))  # on the loop the tier processes use
        return
    print(json.dumps(measure_loopback_overhead(args.n, args.payload_bytes), indent=2))


if __name__ == "__main__":
    main()
