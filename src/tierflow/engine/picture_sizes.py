"""How many bytes a picture or a clip will take on the link: learned from what each tier sent.

An image crosses a link as PNG (engine/images.py), and its size decides its transfer time on a slow
link: the bundled demo-image's pictures take 62 kB at 256 px and 150-220 kB at 512, the random-weight
random-image's noise 122 kB and 490 kB -- one guess cannot fit both. :class:`PictureSizes` keeps a
moving average of the bytes each tier sent per level (its calibration images count); a level not seen
yet is scaled from the nearest one seen, and a tier not seen at all gets :func:`image_bytes`. A clip
(an animated GIF) is learned the same way, in bytes per pixel of each frame.
"""

from __future__ import annotations

import math
import threading

from tierflow.types.tiers import Tier

# demo-image's output (PNG level 1): 62 kB at 256 px, 148 kB at 512, 441 kB at 1024, 1.34 MB at 2048 --
# within 20 % of PNG_BYTES_256 * (side / 256) ** 1.5: the upsampled levels are smoother than the first
PNG_BYTES_256 = 62_000
GIF_BYTES_PER_PIXEL = 0.5  # a clip before any was seen: about this many bytes a pixel a frame
ALPHA = 0.3  # weight of the newest image in the moving average


def image_bytes(resolution: int) -> int:
    """The expected PNG bytes of a ``resolution`` px image before any was seen (demo-image's law)."""
    return int(PNG_BYTES_256 * (resolution / 256) ** 1.5)


def scaled(nbytes: float, seen: int, resolution: int) -> float:
    """``nbytes`` at ``seen`` px scaled to ``resolution`` px: by the area upward, by side ** 1.5 downward.

    PNG bytes grew between the two on the bundled generators (random-image's noise with the area,
    demo-image's smoother pictures about as side ** 1.5); each direction takes the larger guess, so a
    link's time is not promised short.
    """
    exponent = 2.0 if resolution >= seen else 1.5
    return float(nbytes * (resolution / seen) ** exponent)


class PictureSizes:
    """The PNG bytes each tier's images took, per level (see the module docstring); thread-safe."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self._bytes: dict[tuple[Tier, int], float] = {}
        self._gif: dict[Tier, float] = {}  # a clip's bytes per pixel of each frame
        self._lock = threading.Lock()

    def observe(self, tier: Tier, resolution: int, nbytes: int) -> None:
        """One image of ``resolution`` px that ``tier`` sent as ``nbytes`` bytes of PNG."""
        with self._lock:
            old = self._bytes.get((tier, resolution))
            self._bytes[(tier, resolution)] = (
                float(nbytes) if old is None else (1.0 - self.alpha) * old + self.alpha * nbytes
            )

    def expect(self, tier: Tier, resolution: int) -> int:
        """The bytes an image of ``resolution`` px from ``tier`` is expected to take."""
        with self._lock:
            exact = self._bytes.get((tier, resolution))
            if exact is not None:
                return int(exact)
            seen = [(level, b) for (t, level), b in self._bytes.items() if t is tier]
        if not seen:
            return image_bytes(resolution)
        # the nearest level seen (of two as near, the larger guess)
        guesses = [(abs(math.log(level / resolution)), -scaled(b, level, resolution)) for level, b in seen]
        return int(-min(guesses)[1])

    def observe_clip(self, tier: Tier, frames: int, resolution: int, nbytes: int) -> None:
        """One clip of ``frames`` frames of ``resolution`` px that ``tier`` sent as ``nbytes`` of GIF."""
        per_pixel = nbytes / max(frames * resolution * resolution, 1)
        with self._lock:
            old = self._gif.get(tier)
            self._gif[tier] = per_pixel if old is None else (1.0 - self.alpha) * old + self.alpha * per_pixel

    def expect_clip(self, tier: Tier, frames: int, resolution: int) -> int:
        """The bytes a clip of ``frames`` frames of ``resolution`` px from ``tier`` is expected to take."""
        with self._lock:
            per_pixel = self._gif.get(tier, GIF_BYTES_PER_PIXEL)
        return int(frames * resolution * resolution * per_pixel)
