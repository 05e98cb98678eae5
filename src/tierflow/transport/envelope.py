"""The byte layout of one data-plane message (one gRPC stream message).

::

    u8 version | u8 kind | u64 request_id | u16 n_parts | n_parts x (u32 length | bytes)

all big-endian. HELLO / HELLO_ACK carry the handshake in clear (it is
authenticated by the server's signature and the TLS channel); REQUEST and
RESPONSE carry secure frames only: part 0 is the sealed JSON header, parts
1..n the sealed tensors. Each sealed part is bound to its place by
:func:`part_aad` (version, kind, request id, index, part count), so a frame
cannot be moved to another request, position or direction without failing
authentication. ALERT (clear text: code, message) ends a stream whose
handshake failed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from tierflow.errors import FrameError

VERSION = 1
_PREFIX = struct.Struct(">BBQH")
_LEN = struct.Struct(">I")
_AAD = struct.Struct(">4sBBQHH")
MAX_PARTS = 4096
MAX_REQUEST_ID = 2**64 - 1


class Kind(IntEnum):
    HELLO = 1
    HELLO_ACK = 2
    REQUEST = 3
    RESPONSE = 4
    ALERT = 5


class EnvelopeError(FrameError):
    """The message itself is malformed (truncated, wrong version, unknown kind)."""

    def __init__(self, message: str, reason: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id  # known when the prefix was intact


@dataclass(frozen=True)
class Envelope:
    kind: Kind
    request_id: int
    parts: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return _PREFIX.size + sum(_LEN.size + len(p) for p in self.parts)


def encode(kind: Kind, request_id: int, parts: list[bytes] | tuple[bytes, ...]) -> bytes:
    if len(parts) > MAX_PARTS:
        raise ValueError(f"too many parts in one message: {len(parts)} > {MAX_PARTS}")
    chunks = [_PREFIX.pack(VERSION, int(kind), request_id, len(parts))]
    for part in parts:
        chunks.append(_LEN.pack(len(part)))
        chunks.append(part)
    return b"".join(chunks)


def decode(data: bytes) -> Envelope:
    """Parse a message; raise :class:`EnvelopeError` (with the request id when it was readable)."""
    if len(data) < _PREFIX.size:
        raise EnvelopeError(f"message of {len(data)} bytes is shorter than its prefix", "truncated")
    version, kind, request_id, n_parts = _PREFIX.unpack_from(data, 0)
    if version != VERSION:
        raise EnvelopeError(f"unsupported data-plane message version {version}", "version")
    try:
        kind = Kind(kind)
    except ValueError as exc:
        raise EnvelopeError(f"unknown message kind {kind}", "malformed", request_id) from exc
    if n_parts > MAX_PARTS:
        raise EnvelopeError(f"message claims {n_parts} parts", "malformed", request_id)
    view = memoryview(data)
    offset = _PREFIX.size
    parts: list[bytes] = []
    for _ in range(n_parts):
        if offset + _LEN.size > len(data):
            raise EnvelopeError("message truncated inside a part length", "truncated", request_id)
        (length,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        if offset + length > len(data):
            raise EnvelopeError("message truncated inside a part", "truncated", request_id)
        parts.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(data):
        raise EnvelopeError(
            f"{len(data) - offset} trailing bytes after the last part", "malformed", request_id
        )
    return Envelope(kind, request_id, tuple(parts))


def part_aad(kind: Kind, request_id: int, index: int, n_parts: int) -> bytes:
    """Associated data that pins a sealed part to its message and position."""
    return _AAD.pack(b"TFdp", VERSION, int(kind), request_id, index, n_parts)
