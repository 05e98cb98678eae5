"""The SSE parser: events, multi-line data, comments, and bytes cut at every awkward place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tierflow.client.sse import LineSplitter, SSEEvent, aiter_sse, iter_sse

STREAM = (
    "\ufeff: a comment, then a keep-alive\n"
    ":\n"
    "event: token\n"
    'data: {"text": " caf\u00e9 \u2028 \u20ac\U0001f600", "token": 1}\n'
    "\n"
    "data: first line\n"
    "data:second line\n"
    "data\n"
    "id: 7\n"
    "retry: 250\n"
    "unknown: ignored\n"
    "\n"
    "event: nodata\n"
    "\n"
    "event: done\n"
    "data: {}\n"
    "\n"
    "event: cut\n"
    "data: never dispatched\n"
)

EXPECTED = [
    SSEEvent("token", '{"text": " caf\u00e9 \u2028 \u20ac\U0001f600", "token": 1}'),
    SSEEvent("message", "first line\nsecond line\n", id="7", retry=250),
    SSEEvent("done", "{}", id="7", retry=250),
]


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 10_000])
def test_events_whatever_the_chunking_and_line_endings(eol: str, size: int) -> None:
    data = STREAM.replace("\n", eol).encode()
    assert list(iter_sse(_pieces(data, size))) == EXPECTED


def test_every_single_cut_point() -> None:
    data = STREAM.replace("\n", "\r\n").encode()
    for cut in range(len(data) + 1):
        assert list(iter_sse([data[:cut], data[cut:]])) == EXPECTED, cut


def test_async_iteration_gives_the_same_events() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in _pieces(STREAM.replace("\n", "\r\n").encode(), 3):
            yield piece

    async def collect() -> list[SSEEvent]:
        return [event async for event in aiter_sse(chunks())]

    assert asyncio.run(collect()) == EXPECTED


def test_a_last_cr_ends_the_stream_cleanly() -> None:
    assert list(iter_sse([b"data: x\r", b"\r"])) == [SSEEvent("message", "x")]
    assert list(iter_sse([b"data: x\n\r"])) == [SSEEvent("message", "x")]


def test_lines_split_only_on_sse_line_endings() -> None:
    splitter = LineSplitter()
    assert splitter.feed("a\u2028b\x85c\x0bd\r".encode()) == []
    assert splitter.feed(b"\ne") == ["a\u2028b\x85c\x0bd"]
    assert splitter.close() == []  # an unended line cannot complete an event


def test_a_space_after_the_colon_is_dropped_once() -> None:
    assert list(iter_sse([b"data:  two spaces\n\n"])) == [SSEEvent("message", " two spaces")]
