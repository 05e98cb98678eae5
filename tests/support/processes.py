"""Child processes for tests: started with SIGINT ignored; their output read line by line, with deadlines."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

# Runs argv[1:] with SIGINT ignored, the way a non-interactive shell's background job starts
# (`cmd &` in a script, a service manager, a CI runner). exec keeps the disposition and the pid,
# and unlike a preexec_fn it is safe in a test process that runs threads.
_EXEC_SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def popen_sigint_ignored(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **kwargs)``, but the child starts with SIGINT ignored."""
    return subprocess.Popen([sys.executable, "-c", _EXEC_SIGINT_IGNORED, *argv], **kwargs)


class LineReader:
    """Reads a text stream in a background thread; :meth:`next` waits for a line with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def next(self, timeout: float) -> str:
        """The next line; fails if none comes within ``timeout`` seconds or the stream ends."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; so far: {self.seen}") from None
        if line is None:
            self._lines.put(None)
            raise AssertionError(f"the stream ended; it said: {self.seen}")
        self.seen.append(line)
        return line

    def until(self, fragment: str, timeout: float) -> str:
        """Read up to the first line that contains ``fragment`` (within ``timeout`` s in all); return it."""
        deadline = time.monotonic() + timeout
        while fragment not in (line := self.next(max(deadline - time.monotonic(), 0.0))):
            pass
        return line

    def text(self, timeout: float) -> str:
        """The whole stream, lines read before included, once it ends (within ``timeout`` s)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream did not end within {timeout} s"
        while (line := self._lines.get_nowait()) is not None:
            self.seen.append(line)
        return "".join(self.seen)


@contextmanager
def tierflow_up(
    args: Sequence[str], env: dict[str, str], ready_timeout: float = 180.0
) -> Iterator[tuple[dict[str, Any], subprocess.Popen[str]]]:
    """``tierflow up ARGS`` in a child process: its ready line (one JSON object) and the process;
    stopped with SIGTERM afterwards, as a user's Ctrl-C or service manager would."""
    argv = [sys.executable, "-m", "tierflow", "up", *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    try:
        yield json.loads(LineReader(process.stdout).next(timeout=ready_timeout)), process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
