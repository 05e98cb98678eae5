"""The messages of the data plane: a stage request, its response, and who the peer is.

Tensors travel as secure frames (see :mod:`tierflow.transport.envelope`);
everything else here is a small header that is authenticated with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import get_args

import numpy as np

from tierflow.errors import (
    FrameError,
    InvalidInputError,
    KVMissingError,
    ModelNotFoundError,
    TierUnavailableError,
    UserError,
)
from tierflow.types.quant import QuantMode

MetaValue = str | int | float | bool
ORIGIN_KEY = "origin"  # request meta: the entry point a request is for
FAILED_TIER_KEY = "failed_tier"  # response meta: which tier a relayed unavailability is about


class ErrorCode:
    """The ``code`` of a :class:`StageResponse` error. Frame codes are also the metrics reasons."""

    # The request could not be trusted or read; set by the data plane itself.
    FRAME_REJECTED = "frame_rejected"  # message: the wire reason (tampered, replayed, ...)
    BAD_REQUEST = "bad_request"  # authenticated, but malformed (shape mismatch, bad header)
    # Set by the handler (the node) or on its behalf.
    INVALID_INPUT = "invalid_input"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_OP = "unknown_op"
    INTERNAL = "internal"  # the handler raised something that is not a tierflow error
    UNAVAILABLE = "unavailable"  # a recoverable failure behind the handler
    KV_MISSING = "kv_missing"  # the tier lacks the KV cache the step needs (rebuild from history)
    # Set on the client when the stream broke before a reply came.
    DISCONNECTED = "disconnected"


@dataclass
class StageRequest:
    """Run ``op`` of ``model`` on ``inputs`` and return ``outputs`` (empty list: all of them).

    ``quant`` picks how the float input tensors travel: ``raw`` (exact, the
    default), ``fp16``, ``int8`` (one scale) or ``int8_channel`` (a scale per
    slice of the last axis) for bandwidth; other dtypes always travel raw. ``response_quant`` asks the
    server to send the outputs that way (default: the same as ``quant``).
    ``request_id`` is set by the client when sending.
    """

    op: str
    model: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    meta: dict[str, MetaValue] = field(default_factory=dict)
    quant: QuantMode = QuantMode.RAW
    response_quant: QuantMode | None = None
    request_id: int = 0


@dataclass(frozen=True)
class StageError:
    code: str  # an ErrorCode
    message: str
    reason: str = ""  # FRAME_REJECTED: why (tampered, replayed, stale, shape, ...), as in the metrics


@dataclass
class StageResponse:
    """The outputs of a request, or an error. ``quant`` is how the outputs travel back."""

    request_id: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: StageError | None = None
    meta: dict[str, MetaValue] = field(default_factory=dict)
    quant: QuantMode = QuantMode.RAW

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, request_id: int, code: str, message: str, reason: str = "") -> StageResponse:
        return cls(request_id=request_id, error=StageError(code, message, reason))

    def raise_for_error(self, peer: str | None = None) -> StageResponse:
        """Return ``self`` if it succeeded, else raise the tierflow error its code stands for.

        With ``peer`` (the tier that answered) the message names it; a tier that is gone or
        failed inside raises :class:`TierUnavailableError` naming the tier really at fault
        (``meta[FAILED_TIER_KEY]`` when the failure was relayed from further down a route).
        """
        if self.error is None:
            return self
        code, message = self.error.code, self.error.message
        text = f"tier '{peer}': {message}" if peer else f"remote stage failed ({code}): {message}"
        if code == ErrorCode.FRAME_REJECTED:
            raise FrameError(text)
        if code in (ErrorCode.INVALID_INPUT, ErrorCode.BAD_REQUEST):
            raise InvalidInputError(text)
        if code == ErrorCode.UNKNOWN_MODEL:
            raise ModelNotFoundError(text)
        if code == ErrorCode.UNKNOWN_OP:
            raise UserError(text)
        failed = self.meta.get(FAILED_TIER_KEY, peer)
        error = KVMissingError if code == ErrorCode.KV_MISSING else TierUnavailableError
        raise error(text, tier=str(failed) if failed is not None else None)


@dataclass(frozen=True)
class PeerInfo:
    """Who is on the other end of a stream, as proven by its TLS certificate."""

    name: str  # the certificate's common name (the node name)
    fingerprint: bytes  # SHA-256 of its DER certificate
    address: str  # the transport address gRPC reports (through a proxy: the proxy's side)
    session_id: int  # which stream (session) on this server the request came on


def check_quant(mode: object) -> QuantMode:
    """``mode`` as a :class:`QuantMode` (a member, or exactly its name); else InvalidInputError."""
    if isinstance(mode, str):
        try:
            return QuantMode(mode)
        except ValueError:
            pass
    names = ", ".join(QuantMode)
    raise InvalidInputError(f"unknown quantization mode {str(mode)[:40]!r}; use one of {names}")


_META_TYPES = frozenset(get_args(MetaValue))


def check_meta(meta: dict[str, MetaValue]) -> dict[str, MetaValue]:
    """Meta is a flat map of string keys to str/int/float/bool; anything else is a caller bug.

    Every message is checked twice (sealed and opened) on every hop of every token, so the common
    case (exact types) is one set lookup; subclasses (numpy's float64) take the full check."""
    for key, value in meta.items():
        kind = type(value)
        if type(key) is str and kind in _META_TYPES and (kind is not float or math.isfinite(float(value))):
            continue
        _check_meta_item(key, value)
    return meta


def _check_meta_item(key: object, value: object) -> None:
    if not isinstance(key, str):
        raise InvalidInputError(f"meta keys must be strings, got {key!r}")
    if not isinstance(value, MetaValue):
        raise InvalidInputError(
            f"meta value for {key!r} must be str, int, float or bool, not {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"meta value for {key!r} must be finite, got {value}")
