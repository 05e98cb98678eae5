"""Messages on a TLS byte stream: each one a 4-byte big-endian length, then that many bytes.

The data plane's transport (:mod:`tierflow.transport.dataplane`): asyncio streams over mutual TLS,
one connection per session. A length above the connection's limit ends the connection (the other
side is not speaking this protocol, or is hostile), as does a read that stops mid-message.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
import struct
import time

from tierflow.errors import ConfigError, TransportError

_LENGTH = struct.Struct(">I")
_JOIN_BELOW = 64 * 1024  # smaller messages go out as one write with their length (one TLS record)
KEEPALIVE_IDLE_S = 30  # probe an idle connection after this long, every 10 s, give up after 3 misses


class StreamClosed(TransportError):
    """The other side ended the connection (cleanly at a message boundary, or not)."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a (host, port) pair; ConfigError if it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{address!r} is not a host:port address")
    return host.strip("[]"), int(port)


def tune(writer: asyncio.StreamWriter) -> None:
    """TCP keepalive, so that a peer that vanished without a FIN is noticed on an idle session."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        keepalive(sock)


def keepalive(sock: socket.socket) -> None:
    """:func:`tune` for a plain socket (a decode lane's, :mod:`lane`)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


async def read_message(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """The next message; StreamClosed when the stream ended, TransportError when it is not ours."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        raise StreamClosed(
            "the peer ended the stream" if not exc.partial else "stream cut mid-message"
        ) from None
    length = _message_length(head, max_bytes)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise StreamClosed("stream cut mid-message") from None


def write_message(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Queue one message; the caller awaits ``writer.drain()`` (and holds the connection's write lock)."""
    head = _LENGTH.pack(len(data))
    if len(data) < _JOIN_BELOW:
        writer.write(head + data)
    else:  # no copy of a big message just to prepend four bytes
        writer.write(head)
        writer.write(data)


def recv_message(sock: socket.socket, max_bytes: int) -> bytes:
    """:func:`read_message` on a blocking socket (the decode lane, :mod:`lane`)."""
    return _recv_exactly(sock, _message_length(_recv_exactly(sock, _LENGTH.size), max_bytes))


def _message_length(head: bytes, max_bytes: int) -> int:
    """The length a message's head announces; TransportError when it is over ``max_bytes``."""
    (length,) = _LENGTH.unpack(head)
    if length > max_bytes:
        raise TransportError(f"a {length}-byte message is over this connection's {max_bytes}-byte limit")
    return int(length)


def send_message(sock: socket.socket, data: bytes) -> None:
    """:func:`write_message` on a blocking socket: the length and the message in one write."""
    sock.sendall(_LENGTH.pack(len(data)) + data)


def _holds_data(sock: socket.socket) -> bool:
    """A TLS socket may hold decrypted bytes its file does not show."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _readable_poller(sock: socket.socket) -> select.poll:
    poller = select.poll()  # not select.select: it refuses descriptors above 1023
    poller.register(sock, select.POLLIN)
    return poller


def sleep_until_readable(sock: socket.socket, limit_s: float) -> bool:
    """Sleep in the kernel until ``sock`` has data to read or ``limit_s`` has passed; whether it has."""
    return _holds_data(sock) or bool(_readable_poller(sock).poll(max(limit_s, 0.0) * 1000))


def wait_readable(sock: socket.socket, limit_s: float) -> bool:
    """Poll ``sock`` busily, giving up the CPU between looks, until it has data to read or
    ``limit_s`` has passed; whether it has."""
    end = time.perf_counter() + limit_s
    poller = _readable_poller(sock)
    while True:
        if _holds_data(sock) or poller.poll(0):
            return True
        if time.perf_counter() >= end:
            return False
        os.sched_yield()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise StreamClosed("the peer ended the stream" if not got else "stream cut mid-message")
        got += k
    return bytes(buf)
