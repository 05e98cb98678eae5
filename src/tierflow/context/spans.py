"""Layer spans as the API writes them ("a-b", inclusive) and as code uses them ((a, b))."""

from __future__ import annotations

import re

from tierflow.errors import InvalidInputError
from tierflow.model.lm_layers import Span

_SPAN = re.compile(r"^(\d+)-(\d+)$")


def parse_span(text: str) -> tuple[int, int]:
    """``"2-4"`` -> ``(2, 4)``; a UserError for anything else or a reversed span."""
    match = _SPAN.match(text.strip())
    if match is None:
        raise InvalidInputError(f"layer span {text!r} is not of the form 'first-last', e.g. '0-3'")
    first, last = int(match.group(1)), int(match.group(2))
    check_span(first, last)
    return first, last


def format_span(first: int, last: int) -> str:
    """``(2, 4)`` -> ``"2-4"``."""
    return str(Span(first, last))


def check_span(first: int, last: int) -> None:
    """A UserError unless ``0 <= first <= last`` (the rule of :class:`~tierflow.model.lm_layers.Span`)."""
    Span(first, last)


def check_spans(spans: dict[str, str]) -> dict[str, str]:
    """A copy of a tier -> "a-b" mapping after checking every span parses; tier names non-empty."""
    out: dict[str, str] = {}
    for tier, span in spans.items():
        if not tier:
            raise InvalidInputError("a span's tier name is empty")
        first, last = parse_span(span)
        out[tier] = format_span(first, last)
    return out
