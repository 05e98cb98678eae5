"""The binary layout of a secure tensor frame; sealing and opening one under a given key.

Layout (little-endian; docs/WIRE.md has the full table)::

    fixed header  36 bytes   magic "TW", version, flags, mode, dtype, rank, axis, epoch u32, seq u64,
                             session id (16 bytes)
    shape         4 * rank   u32 per dimension
    scales        4 * C      float32; C = 1 (int8), shape[axis] (int8_channel), 0 (fp16, raw)
    zero points   C          uint8, asymmetric int8 only
    ciphertext    P          AES-256-GCM of the payload, P = elements * payload item size
    tag           16

Everything before the ciphertext is the AEAD's associated data, so no header byte can change unnoticed.
The nonce is (epoch u32 || seq u64) big-endian; a sender never reuses a sequence number under a key.
Parsing checks every field against the others and the receiver's limits before anything is trusted
or allocated, and raises only :class:`FrameError` subclasses.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tierflow.errors import FrameFormatError, InvalidInputError, TamperedFrameError
from tierflow.types.quant import QuantMode
from tierflow.wire.quantize import RAW_PARAMS, QuantParams, channel_count, payload_dtype

MAGIC = b"TW"
VERSION = 1
TAG_LEN = 16
SESSION_ID_LEN = 16
MAX_EPOCH = 2**32 - 1
MAX_SEQ = 2**64 - 1

FLAG_ASYMMETRIC = 0x01  # int8 modes: uint8 payload with zero points
FLAG_DP = 0x02  # the sender added differential-privacy noise before quantizing
_KNOWN_FLAGS = FLAG_ASYMMETRIC | FLAG_DP

_FIXED = struct.Struct("<2sBBBBBBIQ16s")
FIXED_LEN = _FIXED.size  # 36
MIN_FRAME_LEN = FIXED_LEN + TAG_LEN

# dtype codes on the wire; numpy dtypes are little-endian here ("<" / "|").
DTYPE_CODES: dict[np.dtype, int] = {
    np.dtype("<f4"): 1,
    np.dtype("<f2"): 2,
    np.dtype("<f8"): 3,
    np.dtype("i1"): 4,
    np.dtype("u1"): 5,
    np.dtype("<i2"): 6,
    np.dtype("<u2"): 7,
    np.dtype("<i4"): 8,
    np.dtype("<u4"): 9,
    np.dtype("<i8"): 10,
    np.dtype("<u8"): 11,
    np.dtype("?"): 12,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass(frozen=True)
class FrameLimits:
    """What a receiver is willing to parse; larger frames are rejected before any allocation."""

    max_rank: int = 8
    max_elements: int = 1 << 28  # 1 GiB of float32


@dataclass(frozen=True)
class FrameHeader:
    session_id: bytes
    epoch: int
    seq: int
    dtype: np.dtype  # the original tensor's dtype, which the receiver gets back
    shape: tuple[int, ...]
    params: QuantParams
    dp: bool = False
    version: int = VERSION

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def payload_len(self) -> int:
        return self.elements * payload_dtype(self.params.mode, self.params.asymmetric, self.dtype).itemsize


@dataclass(frozen=True)
class ParsedFrame:
    """A structurally valid frame; nothing in it is authenticated yet."""

    header: FrameHeader
    aad: memoryview  # the header bytes
    body: memoryview  # ciphertext + tag


def nonce(epoch: int, seq: int) -> bytes:
    return epoch.to_bytes(4, "big") + seq.to_bytes(8, "big")


@cache
def dtype_code(dtype: np.dtype) -> int:
    code = DTYPE_CODES.get(np.dtype(dtype).newbyteorder("<"))
    if code is None:
        names = ", ".join(sorted(str(d) for d in DTYPE_CODES))
        raise InvalidInputError(f"dtype {dtype} cannot travel in a frame (supported: {names})")
    return code


def encode_header(h: FrameHeader) -> bytes:
    p = h.params
    flags = (FLAG_ASYMMETRIC if p.asymmetric else 0) | (FLAG_DP if h.dp else 0)
    fixed = _FIXED.pack(
        MAGIC, h.version, flags, p.mode.code, dtype_code(h.dtype), len(h.shape), p.axis,
        h.epoch, h.seq, h.session_id,
    )  # fmt: skip
    parts = [fixed, struct.pack(f"<{len(h.shape)}I", *h.shape)]
    if p.mode.is_int8:
        parts.append(np.ascontiguousarray(p.scales, "<f4").tobytes())
        if p.asymmetric and p.zero_points is not None:
            parts.append(np.ascontiguousarray(p.zero_points, np.uint8).tobytes())
    return b"".join(parts)


def seal(aead: AESGCM, header: FrameHeader, payload: np.ndarray) -> bytes:
    """Encrypt the flat, C-contiguous ``payload`` under ``aead`` with ``header`` as associated data."""
    aad = encode_header(header)
    data = payload.reshape(-1).view(np.uint8).data
    return aad + aead.encrypt(nonce(header.epoch, header.seq), data, aad)


# A frame carrying a flat byte string raw (a decode lane's message, transport/lane.py): its fixed
# header up to the epoch never changes, so it is packed once and compared once.
_EPOCH_AT = struct.calcsize("<2sBBBBBB")  # where _FIXED's epoch starts: magic .. axis before it
_BYTES = struct.Struct("<IQ16sI")  # epoch, seq, session id, then the one dimension
BYTES_HEADER_LEN = FIXED_LEN + 4


@cache
def _bytes_prefix() -> bytes:
    head = FrameHeader(bytes(SESSION_ID_LEN), 0, 0, np.dtype(np.uint8), (0,), RAW_PARAMS)
    return encode_header(head)[:_EPOCH_AT]


def bytes_header(session_id: bytes, epoch: int, seq: int, length: int) -> bytes:
    """What :func:`encode_header` gives for ``length`` raw uint8 elements, packed directly."""
    return _bytes_prefix() + _BYTES.pack(epoch, seq, session_id, length)


def parse_bytes_frame(
    frame: bytes | bytearray | memoryview, session_id: bytes, limits: FrameLimits
) -> tuple[int, int, int] | None:
    """``(epoch, seq, length)`` of a well-formed raw uint8 frame of ``session_id``; None for any other
    frame (which :func:`parse_frame` then checks and names what is wrong with)."""
    prefix = _bytes_prefix()
    if limits.max_rank < 1 or not isinstance(frame, bytes | bytearray):  # views: the general checks
        return None
    if len(frame) < BYTES_HEADER_LEN + TAG_LEN or frame[:_EPOCH_AT] != prefix:
        return None
    epoch, seq, sid, length = _BYTES.unpack_from(frame, _EPOCH_AT)
    if sid != session_id or length > limits.max_elements:
        return None
    if len(frame) != BYTES_HEADER_LEN + length + TAG_LEN:
        return None
    return epoch, seq, length


def open_bytes_payload(
    aead: AESGCM, frame: bytes | bytearray | memoryview, epoch: int, seq: int, length: int
) -> np.ndarray:
    """Authenticate and decrypt a frame :func:`parse_bytes_frame` accepted; its bytes (uint8)."""
    view = memoryview(frame)
    out = np.empty(length, np.uint8)
    _decrypt_into(aead, nonce(epoch, seq), view[BYTES_HEADER_LEN:], view[:BYTES_HEADER_LEN], out)
    return out


def open_payload(aead: AESGCM, parsed: ParsedFrame) -> np.ndarray:
    """Authenticate and decrypt; returns the flat payload (a new, writable array)."""
    h = parsed.header
    p = h.params
    out = np.empty(h.payload_len, np.uint8)
    _decrypt_into(aead, nonce(h.epoch, h.seq), parsed.body, parsed.aad, out)
    return out.view(payload_dtype(p.mode, p.asymmetric, h.dtype))


def _decrypt_into(aead: AESGCM, iv: bytes, body: memoryview, aad: memoryview, out: np.ndarray) -> None:
    try:
        aead.decrypt_into(iv, body, aad, out.data)
    except InvalidTag:
        raise TamperedFrameError(
            "frame failed authentication (tampered, or sealed under another key)"
        ) from None


def parse_frame(frame: bytes | bytearray | memoryview, limits: FrameLimits) -> ParsedFrame:
    """Check a frame's structure against itself and ``limits``; never trusts a length it has not checked."""
    try:
        view = memoryview(frame).cast("B")
    except (TypeError, ValueError):
        raise FrameFormatError(f"a frame must be contiguous bytes, got {type(frame).__name__}") from None
    total = len(view)
    if total < MIN_FRAME_LEN:
        raise FrameFormatError(f"truncated frame: {total} bytes, a frame has at least {MIN_FRAME_LEN}")
    magic, version, flags, mode_code, dcode, rank, axis, epoch, seq, session_id = _FIXED.unpack_from(view)
    mode, dtype, asymmetric, item = _kind(
        magic, version, flags, mode_code, dcode, rank, axis, limits.max_rank
    )
    shape_end = FIXED_LEN + 4 * rank
    if shape_end + TAG_LEN > total:
        raise FrameFormatError(f"truncated frame: {total} bytes cannot hold a rank-{rank} shape")
    shape = struct.unpack_from(f"<{rank}I", view, FIXED_LEN)
    elements = 1
    for d in shape:
        elements *= d
    if elements > limits.max_elements:
        raise FrameFormatError(f"frame holds {elements} elements, above this receiver's limit of "
                               f"{limits.max_elements}")  # fmt: skip
    channels = channel_count(mode, shape, axis)
    header_len = shape_end + 4 * channels + (channels if asymmetric else 0)
    payload_len = elements * item
    if total != header_len + payload_len + TAG_LEN:
        raise FrameFormatError(
            f"frame is {total} bytes but its header describes {header_len + payload_len + TAG_LEN}"
        )
    params = _read_params(view, mode, axis, asymmetric, channels, shape_end)
    header = FrameHeader(bytes(session_id), epoch, seq, dtype, shape, params, bool(flags & FLAG_DP), version)
    return ParsedFrame(header, view[:header_len], view[header_len:])


@lru_cache(maxsize=512)  # a session sends few kinds of frames; errors are raised, never cached
def _kind(
    magic: bytes, version: int, flags: int, mode_code: int, dcode: int, rank: int, axis: int, max_rank: int
) -> tuple[QuantMode, np.dtype, bool, int]:
    """The mode, dtype, asymmetry and payload item size a frame's fixed header describes, checked."""
    if magic != MAGIC:
        raise FrameFormatError("not a tierflow frame (bad magic)")
    if version != VERSION:
        raise FrameFormatError(f"unsupported frame version {version} (this side speaks {VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise FrameFormatError(f"unknown frame flags 0x{flags:02x}")
    try:
        mode = QuantMode.from_code(mode_code)
    except ValueError:
        raise FrameFormatError(f"unknown quantization mode code {mode_code}") from None
    dtype = CODE_DTYPES.get(dcode)
    if dtype is None:
        raise FrameFormatError(f"unknown dtype code {dcode}")
    asymmetric = bool(flags & FLAG_ASYMMETRIC)
    _check_mode(mode, dtype, asymmetric, rank, axis, max_rank)
    return mode, dtype, asymmetric, payload_dtype(mode, asymmetric, dtype).itemsize


def _check_mode(
    mode: QuantMode, dtype: np.dtype, asymmetric: bool, rank: int, axis: int, max_rank: int
) -> None:
    if rank > max_rank:
        raise FrameFormatError(f"frame has rank {rank}, above this receiver's limit of {max_rank}")
    if mode is not QuantMode.RAW and dtype not in (np.dtype("<f4"), np.dtype("<f2")):
        raise FrameFormatError(f"mode {mode.value} cannot carry dtype {dtype}")
    if asymmetric and not mode.is_int8:
        raise FrameFormatError(f"mode {mode.value} has no asymmetric form")
    if mode is QuantMode.INT8_CHANNEL:
        if axis >= rank:
            raise FrameFormatError(f"channel axis {axis} is out of range for rank {rank}")
    elif axis:
        raise FrameFormatError(f"mode {mode.value} carries no axis, got {axis}")


def _read_params(
    view: memoryview, mode: QuantMode, axis: int, asymmetric: bool, channels: int, offset: int
) -> QuantParams:
    if not mode.is_int8:
        return RAW_PARAMS if mode is QuantMode.RAW else QuantParams(mode)
    scales = np.frombuffer(view, "<f4", channels, offset).copy()
    if channels == 1:
        ok = math.isfinite(scales[0]) and scales[0] > 0
    else:
        ok = bool(np.all(np.isfinite(scales) & (scales > 0)))
    if not ok:
        raise FrameFormatError("frame carries a quantization scale that is not a positive finite number")
    zeros = np.frombuffer(view, np.uint8, channels, offset + 4 * channels).copy() if asymmetric else None
    return QuantParams(mode, axis, asymmetric, scales, zeros)
