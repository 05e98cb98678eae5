"""A secure channel: both directions of one session's tensor frames.

Sending: (optional DP noise) -> quantize -> seal under the current send epoch with the next sequence
number. After ``rotate_after_frames`` frames or ``rotate_after_bytes`` payload bytes the sender moves to
the next epoch, whose key both sides derive from the previous one (keys.next_epoch_key).

Receiving: parse and validate -> check the session id, the expected shape/dtype and the replay window ->
pick the epoch key (deriving up to ``max_epoch_skip`` epochs ahead, tentatively) -> authenticate and
decrypt -> only now accept the sequence number and commit any new epoch -> dequantize. Keys of older
epochs stay for ``epoch_grace_frames`` accepted frames, so frames in flight across a rotation still
open, and are then erased.

Sequence numbers run on across epochs, so one replay window covers every epoch. A channel is safe to
use from one sending and one receiving thread at once.
"""

from __future__ import annotations

import hmac
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tierflow.errors import (
    ConfigError,
    FrameFormatError,
    FrameShapeError,
    InvalidInputError,
    ReplayedFrameError,
    TamperedFrameError,
)
from tierflow.types.quant import QuantMode
from tierflow.wire import frame as fr
from tierflow.wire.keys import KEY_LEN, SessionKeys, next_epoch_key
from tierflow.wire.privacy import GaussianMechanism, PrivacyAccountant
from tierflow.wire.quantize import RAW_PARAMS, Quantized, dequantize, quantize
from tierflow.wire.replay import ReplayWindow

_MAX_DIM = 2**32 - 1


@dataclass(frozen=True)
class ChannelConfig:
    """How a channel quantizes, rotates keys and tolerates reordering. Both peers should agree."""

    mode: QuantMode | str = QuantMode.INT8
    axis: int = -1  # int8_channel: the axis that gets one scale per slice
    asymmetric: bool = False
    replay_window: int = 1024  # frames: reordering tolerated; anything older is rejected
    rotate_after_frames: int = 1 << 24
    rotate_after_bytes: int = 1 << 34  # 16 GiB of payload per key
    epoch_grace_frames: int = 1024  # accepted frames an older epoch's key outlives its successor
    max_epoch_skip: int = 8  # how many epochs ahead of the newest one a receiver derives keys for
    limits: fr.FrameLimits = fr.FrameLimits()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _parse_mode(self.mode))
        checks = [
            ("replay_window", self.replay_window, 1, 1 << 16),
            ("rotate_after_frames", self.rotate_after_frames, 1, 1 << 32),
            ("rotate_after_bytes", self.rotate_after_bytes, 1, 1 << 36),
            ("epoch_grace_frames", self.epoch_grace_frames, 0, 1 << 20),
            ("max_epoch_skip", self.max_epoch_skip, 0, 1024),
            ("limits.max_rank", self.limits.max_rank, 0, 255),
            ("limits.max_elements", self.limits.max_elements, 1, 1 << 40),
        ]
        for name, value, lo, hi in checks:
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


class SecureChannel:
    """Seal tensors to the peer and open the peer's frames, for one session."""

    def __init__(
        self,
        keys: SessionKeys,
        config: ChannelConfig | None = None,
        *,
        privacy: GaussianMechanism | None = None,
        accountant: PrivacyAccountant | None = None,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        for name, key in (("send", keys.send_key), ("receive", keys.recv_key)):
            if not isinstance(key, bytes) or len(key) != KEY_LEN:
                raise ConfigError(f"{name} key must be {KEY_LEN} bytes")
        if len(keys.session_id) != fr.SESSION_ID_LEN:
            raise ConfigError(f"session id must be {fr.SESSION_ID_LEN} bytes")
        self.config = config or ChannelConfig()
        self.session_id = keys.session_id
        self.privacy = privacy
        self.accountant = accountant if accountant is not None else (PrivacyAccountant() if privacy else None)
        self._rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        # sending side
        self._send_lock = threading.Lock()
        self._send_key = keys.send_key
        self._send_aead = AESGCM(keys.send_key)
        self._send_epoch = 0
        self._send_seq = 0
        self._epoch_frames = 0
        self._epoch_bytes = 0
        # receiving side
        self._recv_lock = threading.Lock()
        self._recv_epoch = 0  # newest epoch a frame has authenticated under
        self._recv_key = keys.recv_key  # that epoch's key: the root of forward derivation
        self._recv_aeads: dict[int, AESGCM] = {0: AESGCM(keys.recv_key)}
        self._retiring: dict[int, int] = {}  # older epoch -> accepted frames left before its key goes
        self._window = ReplayWindow(self.config.replay_window)

    # --- sending ---------------------------------------------------------------------------------

    @property
    def send_epoch(self) -> int:
        return self._send_epoch

    @property
    def next_seq(self) -> int:
        return self._send_seq

    def seal(
        self,
        tensor: np.ndarray,
        *,
        mode: QuantMode | str | None = None,
        axis: int | None = None,
        asymmetric: bool | None = None,
    ) -> bytes:
        """Quantize and encrypt ``tensor`` into one frame for the peer."""
        cfg = self.config
        if mode is None:
            mode = cfg.mode
        elif mode.__class__ is not QuantMode:
            mode = _parse_mode(mode)
        asymmetric = cfg.asymmetric if asymmetric is None else asymmetric
        if not isinstance(tensor, np.ndarray | np.generic):
            raise InvalidInputError(f"expected a numpy array, got {type(tensor).__name__}")
        fr.dtype_code(np.asarray(tensor).dtype)  # refuse unsupported dtypes before any work
        self._check_size(np.shape(tensor))
        if self.privacy is not None and self.accountant is not None:
            tensor = self.privacy.apply(tensor, self._rng)
            self.accountant.spend(self.privacy.epsilon, self.privacy.delta)  # refuses before anything leaves
        if mode is QuantMode.RAW and tensor.__class__ is np.ndarray and _plain(tensor):
            # every small message's header frame: the array as it is (quantize()'s checks, minus the work)
            q = Quantized(tensor.reshape(-1), RAW_PARAMS, tensor.dtype, tensor.shape)
        else:
            q = quantize(tensor, mode, axis=cfg.axis if axis is None else axis, asymmetric=bool(asymmetric))
        seq, epoch, aead = self._claim_send(q.payload.nbytes)
        header = fr.FrameHeader(
            self.session_id, epoch, seq, q.dtype, q.shape, q.params, self.privacy is not None
        )
        return fr.seal(aead, header, q.payload)

    def seal_bytes(self, payload: bytes) -> bytes:
        """:meth:`seal` of ``payload`` as a raw uint8 array: the same frame, its header packed directly
        (a decode lane seals one byte string per message; transport/lane.py)."""
        if self.privacy is not None:  # noise goes onto tensors: the general path
            return self.seal(np.frombuffer(payload, np.uint8), mode=QuantMode.RAW)
        length = len(payload)
        self._check_size((length,))
        seq, epoch, aead = self._claim_send(length)
        aad = fr.bytes_header(self.session_id, epoch, seq, length)
        return aad + aead.encrypt(fr.nonce(epoch, seq), payload, aad)

    def _claim_send(self, nbytes: int) -> tuple[int, int, AESGCM]:
        """The next frame's sequence number, key epoch and key; rotates the key when the epoch is full."""
        cfg = self.config
        with self._send_lock:
            seq, epoch, aead = self._send_seq, self._send_epoch, self._send_aead
            if seq > fr.MAX_SEQ:
                raise FrameFormatError("sequence numbers exhausted; start a new session")
            self._send_seq += 1
            self._epoch_frames += 1
            self._epoch_bytes += nbytes
            if self._epoch_frames >= cfg.rotate_after_frames or self._epoch_bytes >= cfg.rotate_after_bytes:
                self._rotate_send()
        return seq, epoch, aead

    def _rotate_send(self) -> None:
        epoch = self._send_epoch + 1
        self._send_key = next_epoch_key(self._send_key, self.session_id, epoch)
        self._send_aead = AESGCM(self._send_key)
        self._send_epoch = epoch
        self._epoch_frames = 0
        self._epoch_bytes = 0

    def _check_size(self, shape: tuple[int, ...]) -> None:
        limits = self.config.limits
        if len(shape) <= 1 and (not shape or shape[0] <= min(_MAX_DIM, limits.max_elements)):
            return  # a flat blob (every message's header frame): one comparison, not three checks
        if len(shape) > limits.max_rank:
            raise InvalidInputError(
                f"tensor has rank {len(shape)}, above the frame limit of {limits.max_rank}"
            )
        if any(d > _MAX_DIM for d in shape):
            raise InvalidInputError(f"a dimension of {shape} exceeds the frame limit of {_MAX_DIM}")
        if math.prod(shape) > limits.max_elements:
            raise InvalidInputError(
                f"tensor {shape} exceeds the frame limit of {limits.max_elements} elements"
            )

    # --- receiving -------------------------------------------------------------------------------

    @property
    def recv_epoch(self) -> int:
        return self._recv_epoch

    @property
    def recv_epochs_held(self) -> list[int]:
        """Epochs whose receive keys are still in memory (newest plus those in their grace period)."""
        with self._recv_lock:
            return sorted(self._recv_aeads)

    def open(
        self,
        frame: bytes | bytearray | memoryview,
        *,
        expect_shape: Sequence[int | None] | None = None,
        expect_dtype: np.dtype | type | str | None = None,
    ) -> np.ndarray:
        """Authenticate and decode one frame from the peer. Raises only FrameError subclasses.

        ``expect_shape`` may use None for a dimension that can vary (e.g. sequence length).
        """
        return self.open_with_header(frame, expect_shape=expect_shape, expect_dtype=expect_dtype)[0]

    def open_with_header(
        self,
        frame: bytes | bytearray | memoryview,
        *,
        expect_shape: Sequence[int | None] | None = None,
        expect_dtype: np.dtype | type | str | None = None,
    ) -> tuple[np.ndarray, fr.FrameHeader]:
        """As :meth:`open`, also returning the (now authenticated) header."""
        parsed = fr.parse_frame(frame, self.config.limits)
        h = parsed.header
        if not hmac.compare_digest(h.session_id, self.session_id):
            raise TamperedFrameError("frame belongs to another session")
        _check_expected(h, expect_shape, expect_dtype)
        payload = self._authenticate(h.epoch, h.seq, lambda aead: fr.open_payload(aead, parsed))
        return dequantize(payload, h.params, h.dtype, h.shape), h

    def open_bytes(self, frame: bytes | bytearray | memoryview) -> tuple[np.ndarray, int]:
        """:meth:`open` of a frame that :meth:`seal_bytes` made: its bytes (uint8) and sequence number.
        The same checks; any other frame is refused as :meth:`open` would refuse it (FrameError), or
        as not being a flat uint8 array (FrameShapeError)."""
        known = fr.parse_bytes_frame(frame, self.session_id, self.config.limits)
        if known is None:  # the general path names what is wrong
            array, h = self.open_with_header(frame, expect_shape=(None,), expect_dtype=np.uint8)
            return array, h.seq
        epoch, seq, length = known
        payload = self._authenticate(
            epoch, seq, lambda aead: fr.open_bytes_payload(aead, frame, epoch, seq, length)
        )
        return payload, seq

    def _authenticate(self, epoch: int, seq: int, decrypt: Callable[[AESGCM], np.ndarray]) -> np.ndarray:
        """``decrypt`` under the key of ``epoch`` if ``seq`` is neither replayed nor stale; it raises
        TamperedFrameError before any state changes."""
        with self._recv_lock:
            self._window.check(seq)
            aead, derived = self._recv_aead(epoch)
        payload = decrypt(aead)
        with self._recv_lock:
            self._window.accept(seq)  # re-checks: another thread may have taken this number meanwhile
            self._commit(epoch, derived)
        return payload

    def _recv_aead(self, epoch: int) -> tuple[AESGCM, list[tuple[int, bytes]]]:
        """The key for ``epoch``, plus keys derived on the way there (committed only after authentication)."""
        held = self._recv_aeads.get(epoch)
        if held is not None:
            return held, []
        if epoch < self._recv_epoch:
            raise ReplayedFrameError(f"key epoch {epoch} has been retired (newest is {self._recv_epoch})")
        if epoch - self._recv_epoch > self.config.max_epoch_skip:
            raise TamperedFrameError(
                f"frame claims key epoch {epoch}, more than {self.config.max_epoch_skip} ahead of "
                f"{self._recv_epoch}"
            )
        derived = []
        key = self._recv_key
        for e in range(self._recv_epoch + 1, epoch + 1):
            key = next_epoch_key(key, self.session_id, e)
            derived.append((e, key))
        return AESGCM(key), derived

    def _commit(self, epoch: int, derived: list[tuple[int, bytes]]) -> None:
        grace = self.config.epoch_grace_frames
        if derived and epoch > self._recv_epoch:
            for e, key in derived:
                self._recv_aeads[e] = AESGCM(key)
            # the old newest epoch and any skipped ones start their grace (+1: this frame counts below)
            for e in [self._recv_epoch, *(e for e, _ in derived[:-1])]:
                self._retiring[e] = grace + 1
            self._recv_epoch, self._recv_key = epoch, derived[-1][1]
        for e in list(self._retiring):
            self._retiring[e] -= 1
            if self._retiring[e] <= 0:
                del self._retiring[e]
                self._recv_aeads.pop(e, None)


def _plain(a: np.ndarray) -> bool:
    """Whether ``a`` can be sent raw as it is: C-contiguous, in native byte order, at least 1-d."""
    return a.flags.c_contiguous and a.dtype.isnative and a.ndim > 0


def _parse_mode(mode: QuantMode | str) -> QuantMode:
    try:
        return QuantMode.parse(mode)
    except InvalidInputError as exc:
        raise ConfigError(str(exc)) from None


def _check_expected(
    h: fr.FrameHeader,
    expect_shape: Sequence[int | None] | None,
    expect_dtype: np.dtype | type | str | None,
) -> None:
    if expect_dtype is not None and np.dtype(expect_dtype) != h.dtype:
        raise FrameShapeError(f"frame carries dtype {h.dtype}, expected {np.dtype(expect_dtype)}")
    if expect_shape is not None:
        expected = tuple(expect_shape)
        ok = len(expected) == len(h.shape) and all(
            e is None or e == d for e, d in zip(expected, h.shape, strict=True)
        )
        if not ok:
            shown = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
            raise FrameShapeError(f"frame carries shape {h.shape}, expected {shown}")
