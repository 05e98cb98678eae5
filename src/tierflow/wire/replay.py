"""A sliding replay window over sequence numbers (as in IPsec / DTLS, RFC 4303 section 3.4.3)."""

from __future__ import annotations

from tierflow.errors import ConfigError, ReplayedFrameError


class ReplayWindow:
    """Accepts each sequence number once, in any order within ``size`` of the highest accepted.

    ``check`` runs before authentication and changes nothing; ``accept`` runs after it, so a forged
    frame can never move the window.
    """

    def __init__(self, size: int) -> None:
        if not 1 <= size <= 1 << 16:
            raise ConfigError(f"replay window must hold 1..65536 frames, got {size}")
        self.size = size
        self._top = -1  # highest accepted sequence number
        self._seen = 0  # bit i set: sequence number top - i was accepted

    @property
    def top(self) -> int:
        return self._top

    def check(self, seq: int) -> None:
        if seq > self._top:
            return
        behind = self._top - seq
        if behind >= self.size:
            raise ReplayedFrameError(
                f"frame {seq} is older than the replay window ({self.size} frames behind {self._top})"
            )
        if self._seen >> behind & 1:
            raise ReplayedFrameError(f"frame {seq} was already received")

    def accept(self, seq: int) -> None:
        self.check(seq)
        if seq > self._top:
            shift = seq - self._top
            self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self._top = seq
        else:
            self._seen |= 1 << (self._top - seq)
