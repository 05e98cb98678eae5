"""One data-plane session: the handshake on a fresh stream, then sealed messages both ways.

Handshake (two messages, on top of mutual TLS)::

    client -> HELLO      [protocol, client X25519 share]
    server -> HELLO_ACK  [server X25519 share, session id, server cert (DER), signature]

The server signs ``sha256(HELLO) || server share || session id || client fp || server fp`` with
its TLS key, where ``client fp`` is the certificate it saw in the TLS handshake
(``auth_context``). The client checks the certificate chains to its CA and names the server it
meant (and equals a pinned certificate, if given), checks the signature, and checks that the
server saw *its* certificate: a relay holding another CA-signed certificate shows up there as a
different client fingerprint and the client aborts. Both sides then derive keys with
:meth:`tierflow.wire.KeyShare.agree`, binding both fingerprints, so even an unnoticed relay would
hold keys neither end uses.

Messages: every REQUEST / RESPONSE is one :mod:`envelope`. Part 0 is the header frame, a raw
uint8 :class:`tierflow.wire.SecureChannel` frame holding ``u32 length | JSON header | inline
tensors``; parts 1..n are one frame per remaining tensor. The JSON names the request id, the
direction and, per tensor, its name, dtype, shape and either its offset in the header frame
(``inline``: raw tensors up to ``inline_limit`` bytes per message, 64 KiB by default, so a small
request costs one AES-GCM frame, not two) or the sequence number of its own frame (quantized or
large tensors). The receiver opens each frame expecting exactly that dtype, shape and sequence
number, so a frame moved, swapped or re-shaped is rejected.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from cryptography import x509

from tierflow.errors import (
    FrameError,
    FrameFormatError,
    FrameShapeError,
    InvalidInputError,
    KeyAgreementError,
    ReplayedFrameError,
    TamperedFrameError,
    TransportError,
)
from tierflow.transport import envelope as env
from tierflow.transport.envelope import Envelope, EnvelopeError, Kind
from tierflow.transport.tls import (
    Identity,
    cert_fingerprint,
    common_name,
    sign,
    verify_server_cert,
    verify_signature,
)
from tierflow.wire import ChannelConfig, KeyShare, QuantMode, SecureChannel, new_session_id, parse_frame
from tierflow.wire.frame import DTYPE_CODES

PROTOCOL = b"tierflow-dp/1"
_SIG_LABEL = b"tierflow-dp/1 handshake"
MAX_HEADER_BYTES = 1 << 20
MAX_RANK = 32
INLINE_LIMIT = 64 * 1024  # raw tensors up to this many bytes per message share the header's frame
FLOAT_DTYPES = (np.dtype("<f4"), np.dtype("<f2"))
_SIZE_MISMATCH = re.compile(r"frame is (\d+) bytes but its header describes (\d+)")
_DIRECTION = {Kind.REQUEST: "request", Kind.RESPONSE: "response"}


class MessageRejected(FrameError):
    """An incoming message was refused. ``reason`` is the metrics label; ``request_id`` whom to tell.

    ``request_id`` is the id from the authenticated header when that opened, else the id written in
    the envelope (a hint only), else None: the message is dropped unanswered.
    """

    def __init__(self, reason: str, message: str, request_id: int | None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message
        self.request_id = request_id


class TensorSpec(NamedTuple):
    """A tensor as the sealed header describes it: inline (``where`` = offset) or framed (``where`` = seq)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    inline: bool
    where: int
    nbytes: int


class OpenedMessage(NamedTuple):  # NamedTuples: built per message, far cheaper than frozen dataclasses
    request_id: int
    header: dict[str, Any]
    tensors: dict[str, np.ndarray]


# --- handshake ----------------------------------------------------------------------------------


def client_hello() -> tuple[KeyShare, bytes]:
    share = KeyShare()
    return share, env.encode(Kind.HELLO, 0, [PROTOCOL, share.public])


def server_accept(
    hello: bytes, identity: Identity, client_cert_pem: bytes, config: ChannelConfig
) -> tuple[Session, bytes]:
    """Answer a client's HELLO; returns the server's session and the HELLO_ACK to send."""
    try:
        msg = env.decode(hello)
    except EnvelopeError as exc:
        raise KeyAgreementError(f"bad hello: {exc}") from None
    if msg.kind is not Kind.HELLO or len(msg.parts) != 2 or bytes(msg.parts[0]) != PROTOCOL:
        raise KeyAgreementError("the first message of a stream must be a tierflow-dp/1 HELLO")
    client_public = bytes(msg.parts[1])
    client_fp = cert_fingerprint(client_cert_pem)
    server_fp = identity.fingerprint
    share, session_id = KeyShare(), new_session_id()
    keys = share.agree(
        client_public, session_id=session_id, local_fingerprint=server_fp, peer_fingerprint=client_fp
    )
    signature = sign(identity, _transcript(hello, share.public, session_id, client_fp, server_fp))
    ack = env.encode(Kind.HELLO_ACK, 0, [share.public, session_id, identity.cert_der, signature])
    peer_name = common_name(x509.load_pem_x509_certificate(client_cert_pem))
    return Session(SecureChannel(keys, config), peer_name, client_fp), ack


def client_finish(
    share: KeyShare,
    hello: bytes,
    ack: bytes,
    identity: Identity,
    server_name: str,
    config: ChannelConfig,
    pinned_fingerprint: bytes | None = None,
) -> Session:
    """Check the server's HELLO_ACK and derive the client's session. Raises TransportError."""
    try:
        msg = env.decode(ack)
    except EnvelopeError as exc:
        raise TransportError(f"bad handshake reply from {server_name}: {exc}") from None
    if msg.kind is Kind.ALERT:
        raise TransportError(f"{server_name} refused the session: {_alert_text(msg)}")
    if msg.kind is not Kind.HELLO_ACK or len(msg.parts) != 4:
        raise TransportError(f"{server_name} did not answer with a data-plane handshake")
    server_public, session_id, cert_der, signature = (bytes(p) for p in msg.parts)
    cert = verify_server_cert(cert_der, identity.ca_pem, server_name)
    server_fp = cert_fingerprint(cert_der)
    if pinned_fingerprint is not None and not hmac.compare_digest(server_fp, pinned_fingerprint):
        raise TransportError(f"{server_name} presented a certificate other than the pinned one")
    client_fp = identity.fingerprint
    try:
        verify_signature(cert, _transcript(hello, server_public, session_id, client_fp, server_fp), signature)
    except TransportError:
        raise TransportError(
            f"handshake with {server_name} failed: the server did not see our certificate "
            "(a relay in the path?) or its signature is invalid"
        ) from None
    try:
        keys = share.agree(
            server_public, session_id=session_id, local_fingerprint=client_fp, peer_fingerprint=server_fp
        )
    except (KeyAgreementError, InvalidInputError) as exc:
        raise TransportError(f"key agreement with {server_name} failed: {exc}") from None
    return Session(SecureChannel(keys, config), common_name(cert), server_fp)


def alert(code: str, message: str) -> bytes:
    return env.encode(Kind.ALERT, 0, [code.encode(), message.encode()[:1024]])


def _alert_text(msg: Envelope) -> str:
    return ": ".join(bytes(p).decode("utf-8", "replace") for p in msg.parts[:2]) or "no reason given"


def _transcript(
    hello: bytes, server_public: bytes, session_id: bytes, client_fp: bytes, server_fp: bytes
) -> bytes:
    return _SIG_LABEL + hashlib.sha256(hello).digest() + server_public + session_id + client_fp + server_fp


# --- sealed messages ----------------------------------------------------------------------------


class Session:
    """Seal messages to the peer and open the peer's, over one :class:`SecureChannel`."""

    def __init__(
        self,
        channel: SecureChannel,
        peer_name: str,
        peer_fingerprint: bytes,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        self.channel = channel
        self.peer_name = peer_name
        self.peer_fingerprint = peer_fingerprint
        self.inline_limit = inline_limit
        self._send_lock = threading.Lock()  # one message's frames take consecutive sequence numbers
        self._recv_top = -1  # highest sequence number opened, to tell "replayed" from "stale"

    @property
    def session_id(self) -> bytes:
        return self.channel.session_id

    def seal(
        self,
        kind: Kind,
        request_id: int,
        header: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray],
        quant: QuantMode | str = QuantMode.RAW,
    ) -> bytes:
        """One envelope: the header (plus tensor specs, request id and direction) and every tensor.

        Float tensors travel in ``quant``; every other dtype raw (ids and masks must stay exact).
        Raw tensors up to ``inline_limit`` bytes in all ride inside the header frame.
        """
        mode = QuantMode.parse(quant)
        budget = self.inline_limit
        inline: list[np.ndarray] = []
        framed: list[tuple[np.ndarray, QuantMode]] = []
        specs: list[list[Any]] = []
        offset = 0
        for name, value in tensors.items():
            a = _as_array(name, value)
            m = mode if a.dtype in FLOAT_DTYPES else QuantMode.RAW
            if m is QuantMode.RAW and a.nbytes <= budget:
                budget -= a.nbytes
                specs.append([name, a.dtype.str, list(a.shape), "i", offset])
                inline.append(a)
                offset += _padded(a.nbytes)
            else:
                specs.append([name, a.dtype.str, list(a.shape), "f", len(framed)])
                framed.append((a, m))
        with self._send_lock:
            first = self.channel.next_seq + 1  # the header takes next_seq, framed tensors the ones after
            for spec in specs:
                if spec[3] == "f":
                    spec[4] += first
            body = dict(header, rid=request_id, dir=_DIRECTION[kind], tensors=specs)
            blob = pack_header_frame(_JSON.encode(body).encode(), inline)
            parts = [self.channel.seal(blob, mode=QuantMode.RAW)]
            for i, (a, m) in enumerate(framed):
                if self.channel.next_seq != first + i:  # cannot happen while we hold the lock
                    raise TransportError("secure channel sequence moved under a message being sealed")
                parts.append(self.channel.seal(a, mode=m))
        return env.encode(kind, request_id, parts)

    def open(self, data: bytes, kind: Kind) -> OpenedMessage:
        """Parse, authenticate and decode one message of ``kind``; raise :class:`MessageRejected`."""
        try:
            msg = env.decode(data)
        except EnvelopeError as exc:
            raise MessageRejected(exc.reason, str(exc), exc.request_id) from None
        hint = msg.request_id
        if msg.kind is not kind:
            raise MessageRejected("unexpected", f"expected a {kind.name} message, got {msg.kind.name}", hint)
        if not msg.parts:
            raise MessageRejected("malformed", "message has no header", hint)
        blob, _seq = self.open_frame(msg.parts[0], hint, None, np.uint8)
        header, specs, data_start = _parse_header(blob, kind, hint)
        rid: int = header["rid"]
        if rid != hint:
            raise MessageRejected("tampered", f"envelope says request {hint}, its sealed header {rid}", rid)
        framed = [s for s in specs if not s.inline]
        if len(framed) != len(msg.parts) - 1:
            raise MessageRejected(
                "malformed",
                f"header lists {len(framed)} framed tensors, message has {len(msg.parts) - 1}",
                rid,
            )
        tensors: dict[str, np.ndarray] = {}
        expected = data_start
        for spec in specs:
            if spec.inline:
                if spec.where != expected - data_start:
                    raise MessageRejected("bad_header", f"inline tensor {spec.name!r} is out of place", rid)
                tensors[spec.name] = _inline_tensor(blob, expected, spec, rid)
                expected += _padded(spec.nbytes)
        if expected != len(blob):
            raise MessageRejected(
                "shape",
                f"header frame holds {len(blob) - data_start} bytes of inline "
                f"tensors, its header describes {expected - data_start}",
                rid,
            )
        for spec, part in zip(framed, msg.parts[1:], strict=True):
            array, seq = self.open_frame(part, rid, spec.shape, spec.dtype)
            if seq != spec.where:
                raise MessageRejected(
                    "misplaced",
                    f"tensor {spec.name!r} arrived in frame {seq}, its header says {spec.where}",
                    rid,
                )
            tensors[spec.name] = array
        return OpenedMessage(rid, header, tensors)

    def open_frame(
        self, part: bytes | memoryview, rid: int | None, shape: tuple[int, ...] | None, dtype: Any
    ) -> tuple[np.ndarray, int]:
        """Authenticate and decode one frame; MessageRejected (its metrics reason, for ``rid``) if not."""
        try:
            array, h = self.channel.open_with_header(part, expect_shape=shape, expect_dtype=dtype)
        except FrameError as exc:
            raise MessageRejected(self._reason(exc, part), str(exc), rid) from None
        return array, self._received(h.seq)

    def open_bytes(self, part: bytes | memoryview) -> np.ndarray:
        """:meth:`open_frame` of a frame :meth:`SecureChannel.seal_bytes` made (a decode lane's
        message): its bytes (uint8); MessageRejected if not."""
        try:
            payload, seq = self.channel.open_bytes(part)
        except FrameError as exc:
            raise MessageRejected(self._reason(exc, part), str(exc), None) from None
        self._received(seq)
        return payload

    def _received(self, seq: int) -> int:
        if seq > self._recv_top:
            self._recv_top = seq
        return seq

    def _reason(self, exc: FrameError, part: bytes | memoryview) -> str:
        """The metrics label for a frame the channel refused."""
        if isinstance(exc, FrameShapeError):
            return "shape"
        if isinstance(exc, ReplayedFrameError):
            seq = self._seq_of(part)
            stale = seq is not None and seq + self.channel.config.replay_window <= self._recv_top
            return "stale" if stale else "replayed"
        if isinstance(exc, TamperedFrameError):
            sid = self._session_of(part)
            return "wrong_key" if sid is not None and sid != self.session_id else "tampered"
        if isinstance(exc, FrameFormatError):
            return "truncated" if _is_truncation(str(exc)) else "malformed"
        if isinstance(exc, KeyAgreementError):
            return "key_agreement"
        return "rejected"

    def _seq_of(self, part: bytes | memoryview) -> int | None:
        try:
            return parse_frame(part, self.channel.config.limits).header.seq
        except FrameError:
            return None

    def _session_of(self, part: bytes | memoryview) -> bytes | None:
        try:
            return parse_frame(part, self.channel.config.limits).header.session_id
        except FrameError:
            return None


def _is_truncation(message: str) -> bool:
    """Whether the wire's format error says the frame is shorter than its header (best effort)."""
    if "truncated" in message:
        return True
    m = _SIZE_MISMATCH.search(message)
    return m is not None and int(m.group(1)) < int(m.group(2))


def _as_array(name: str, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"tensor names must be non-empty strings, got {name!r}")
    if not isinstance(value, np.ndarray | np.generic):
        raise InvalidInputError(f"tensor {name!r} must be a numpy array, got {type(value).__name__}")
    array = np.asarray(value)
    if array.dtype in _NATIVE_DTYPES:
        return array
    if np.dtype(array.dtype).newbyteorder("<") not in DTYPE_CODES:
        raise InvalidInputError(f"tensor {name!r} has dtype {array.dtype}, which cannot travel in a frame")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


_NATIVE_DTYPES = frozenset(d.newbyteorder("=") for d in DTYPE_CODES)
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # json.dumps builds one per call
_BLOB_LEN = struct.Struct(">I")
_INT63 = 1 << 63
_ALIGN = 16  # inline tensors start on 16-byte boundaries, so the views handed out are aligned


def _padded(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def pack_header_frame(header_json: bytes, inline: list[np.ndarray]) -> np.ndarray:
    """``u32 json length | json | padding | inline tensors, each padded``, as one uint8 array."""
    chunks = [_BLOB_LEN.pack(len(header_json)), header_json]
    used = _BLOB_LEN.size + len(header_json)
    chunks.append(bytes(_padded(used) - used))
    for a in inline:
        chunks.append(a.tobytes())  # C order, whatever the array's layout
        chunks.append(bytes(_padded(a.nbytes) - a.nbytes))
    return np.frombuffer(b"".join(chunks), np.uint8)


def _inline_tensor(blob: np.ndarray, start: int, spec: TensorSpec, rid: int) -> np.ndarray:
    end = start + spec.nbytes
    if end > len(blob):
        raise MessageRejected("shape", f"inline tensor {spec.name!r} {spec.shape} runs past its frame", rid)
    return blob[start:end].view(spec.dtype).reshape(spec.shape)


def _parse_header(blob: np.ndarray, kind: Kind, hint: int) -> tuple[dict[str, Any], list[TensorSpec], int]:
    """Validate an authenticated header frame; return the header, tensor specs and where inline data starts.

    Its content is trusted to come from the peer, not to be sane.
    """

    def bad(why: str, rid: int = hint) -> MessageRejected:
        return MessageRejected("bad_header", why, rid)

    if len(blob) < _BLOB_LEN.size:
        raise bad("header frame is too short")
    (json_len,) = _BLOB_LEN.unpack_from(blob.data, 0)
    if json_len > min(MAX_HEADER_BYTES, len(blob) - _BLOB_LEN.size):
        raise bad(f"header length {json_len} does not fit its frame")
    try:
        header = json.loads(blob[_BLOB_LEN.size : _BLOB_LEN.size + json_len].tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise bad("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    rid = header.get("rid")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= env.MAX_REQUEST_ID:
        raise bad("header has no valid request id")
    if header.get("dir") != _DIRECTION[kind]:
        raise MessageRejected("tampered", f"a {header.get('dir')} header arrived as a {kind.name}", rid)
    specs_raw = header.get("tensors")
    if not isinstance(specs_raw, list):
        raise bad("header has no tensor list", rid)
    specs: list[TensorSpec] = []
    names: set[str] = set()
    for item in specs_raw:
        spec = _parse_spec(item)
        if spec is None:
            raise bad(f"invalid tensor entry {str(item)[:80]}", rid)
        if spec.name in names:
            raise bad(f"tensor {spec.name!r} appears twice", rid)
        names.add(spec.name)
        specs.append(spec)
    return header, specs, _padded(_BLOB_LEN.size + json_len)


def _parse_spec(item: Any) -> TensorSpec | None:
    if not (isinstance(item, list) and len(item) == 5):
        return None
    name, dtype, shape, how, where = item
    if not (isinstance(name, str) and name and isinstance(dtype, str) and isinstance(shape, list)):
        return None
    if len(shape) > MAX_RANK or how not in ("i", "f") or not _is_uint(where):
        return None
    for d in shape:
        if not _is_uint(d):
            return None
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        return None
    if dt not in DTYPE_CODES:
        return None
    nbytes = dt.itemsize
    for d in shape:
        nbytes *= d
    return TensorSpec(name, dt, tuple(shape), how == "i", where, nbytes)


def _is_uint(x: Any) -> bool:
    return type(x) is int and 0 <= x < _INT63  # type() excludes bool
