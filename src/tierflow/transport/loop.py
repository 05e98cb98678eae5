"""The event loop a tier process runs its data plane on: uvloop where it is installed.

Every decode step crosses each hop as a request and a reply, so the loop's per-message cost is on
the token's path: with uvloop a 2 KiB data-plane round trip took 0.37 ms against 0.39 ms, and the
8x512 Llama split over loopback decoded 7-9 % faster (docs/BENCHMARKS.md). The process's event-loop
policy is left alone: the link emulator's threads and the tests keep asyncio's own loop, which the
emulator's flow control is written against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor if uvloop is installed, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:  # Windows, or a minimal install: asyncio's loop works the same, slower
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(main)
