"""The deployment's recent requests, as the dashboard lists them: where each ran and what it took."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from tierflow.engine.conversations import Finished
from tierflow.engine.image_routing import ClipRoute, ImageRoute
from tierflow.engine.inspection import Inspection
from tierflow.engine.routing import deepest

RECENT_MAX = 50


class RecentRequests:
    """The last RECENT_MAX requests, newest first."""

    def __init__(self, size: int = RECENT_MAX) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)

    def text(self, done: Finished) -> None:
        outcome = done.outcome
        self._add(
            "text", deepest(outcome.spans).value, outcome.ttft_s + outcome.decode_s, None,
            done.route.decision.reason if done.route is not None else None, list(outcome.events),
            outcome.stats.compute_s, spans={t.value: str(s) for t, s in outcome.spans.items()},
            ttft_s=round(outcome.ttft_s, 4), tokens_per_s=round(outcome.tokens_per_s, 2),
            tokens=len(outcome.generated),
        )

    def image(self, routed: ImageRoute) -> None:
        image = routed.image
        self._add("image", image.tier.value, image.wall_s, routed.resolution, routed.decision.reason,
                  [{"event": "failed", **f} for f in routed.failed], {image.tier.value: image.elapsed_s})

    def clip(self, routed: ClipRoute) -> None:
        clip = routed.clip
        self._add("clip", clip.tier.value, clip.wall_s, routed.resolution, routed.decision.reason,
                  [{"event": "failed", **f} for f in routed.failed], {clip.tier.value: clip.elapsed_s},
                  frames=clip.frames)

    def inspection(self, found: Inspection) -> None:
        tiers = (found.first, found.final) if found.escalated else (found.first,)
        events = [{"event": "escalated", "tier": found.final.tier.value}] if found.escalated else []
        events += [{"event": "failed", "error": f} for f in found.failed]
        self._add("inspection", found.final.tier.value, sum(t.wall_s for t in tiers), None, found.reason,
                  events, {t.tier.value: t.elapsed_s for t in tiers}, cracked=found.final.cracked)

    def _add(
        self, kind: str, tier: str, wall_s: float, resolution: int | None, reason: str | None,
        events: list[dict[str, Any]], compute_s: dict[str, float], **more: Any,
    ) -> None:
        self._items.appendleft({
            "at": time.time(), "kind": kind, "tier": tier, "spans": None, "wall_s": round(wall_s, 4),
            "ttft_s": None, "tokens_per_s": None, "tokens": None, "resolution": resolution, "reason": reason,
            "events": events, "compute_s": {k: round(v, 4) for k, v in compute_s.items()}, **more,
        })

    def list(self) -> list[dict[str, Any]]:
        return list(self._items)
