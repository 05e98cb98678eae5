r"""A small server-sent-events parser (the WHATWG ``text/event-stream`` rules) over raw bytes.

It splits lines itself, on ``\r\n``, ``\r`` and ``\n`` only: httpx's ``iter_lines`` splits on
every line boundary of ``str.splitlines`` (U+2028, U+0085, ...), which a generated token -- sent
unescaped by a JSON encoder with ``ensure_ascii=False`` -- may well contain. Bytes are split
before decoding, so a chunk that ends inside a UTF-8 character or between ``\r`` and ``\n``
is no trouble. One :class:`SSEDecoder` serves the sync and the async client: an event ends at a
blank line; ``data:`` lines join with ``\n``; a line starting with ``:`` is a comment (a
keep-alive); an event cut off by the end of the stream is dropped, as the standard says.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")


class LineSplitter:
    """Bytes in, complete lines (decoded, without their endings) out."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        """The lines that ``chunk`` completes; the rest waits for the next chunk."""
        data = self._pending + chunk
        lines: list[str] = []
        start = 0
        for match in _EOL.finditer(data):
            if match.group() == b"\r" and match.end() == len(data):
                break  # perhaps the first half of \r\n: wait for the next chunk
            lines.append(data[start : match.start()].decode("utf-8", "replace"))
            start = match.end()
        self._pending = data[start:]
        return lines

    def close(self) -> list[str]:
        r"""At the end of the stream: a line ended by a last ``\r``; an unended line is dropped."""
        data, self._pending = self._pending, b""
        return [data[:-1].decode("utf-8", "replace")] if data.endswith(b"\r") else []


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type (``message`` unless named), its data, its last id."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it lines one by one (without their endings); a blank line returns the event it completes."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None
        self._first = True

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line (without its ending); the completed event at a blank line, else None."""
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")  # a byte-order mark may open the stream
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None  # unknown fields are ignored

    def _dispatch(self) -> SSEEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:  # an event with no data is not dispatched
            return None
        return SSEEvent(event, "\n".join(data), self._last_id, self._retry)


def iter_sse(chunks: Iterable[bytes]) -> Iterator[SSEEvent]:
    """The events in a byte stream (for example ``response.iter_bytes()``)."""
    splitter, decoder = LineSplitter(), SSEDecoder()
    for chunk in chunks:
        yield from _events(decoder, splitter.feed(chunk))
    yield from _events(decoder, splitter.close())


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """The events in an async byte stream (for example ``response.aiter_bytes()``)."""
    splitter, decoder = LineSplitter(), SSEDecoder()
    async for chunk in chunks:
        for event in _events(decoder, splitter.feed(chunk)):
            yield event
    for event in _events(decoder, splitter.close()):
        yield event


def _events(decoder: SSEDecoder, lines: list[str]) -> Iterator[SSEEvent]:
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
