"""The deployment's recent requests, as the dashboard lists them: where each ran and what it took."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from tierflow.engine.conversations import Finished
from tierflow.engine.image_routing import ImageRoute
from tierflow.engine.routing import deepest

RECENT_MAX = 50


class RecentRequests:
    """The last RECENT_MAX requests, newest first."""

    def __init__(self, size: int = RECENT_MAX) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)

    def text(self, done: Finished) -> None:
        outcome = done.outcome
        wall_s = outcome.ttft_s + outcome.decode_s
        self._items.appendleft({
            "at": time.time(),
            "kind": "text",
            "tier": deepest(outcome.spans).value,
            "spans": {t.value: str(s) for t, s in outcome.spans.items()},
            "wall_s": round(wall_s, 4),
            "ttft_s": round(outcome.ttft_s, 4),
            "tokens_per_s": round(outcome.tokens_per_s, 2),
            "tokens": len(outcome.generated),
            "resolution": None,
            "reason": done.route.decision.reason if done.route is not None else None,
            "events": list(outcome.events),
            "compute_s": {k: round(v, 4) for k, v in outcome.stats.compute_s.items()},
        })

    def image(self, routed: ImageRoute) -> None:
        image = routed.image
        self._items.appendleft({
            "at": time.time(),
            "kind": "image",
            "tier": image.tier.value,
            "spans": None,
            "wall_s": round(image.wall_s, 4),
            "ttft_s": None,
            "tokens_per_s": None,
            "tokens": None,
            "resolution": routed.resolution,
            "reason": routed.decision.reason,
            "events": [{"event": "failed", **f} for f in routed.failed],
            "compute_s": {image.tier.value: round(image.elapsed_s, 4)},
        })

    def list(self) -> list[dict[str, Any]]:
        return list(self._items)
