"""What every command shares: the consoles, one-line errors, progress bars, stopping on signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tierflow.errors import ConfigError, RecoverableError, TierflowError, UserError

console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

UNBOUNDED_WIDTH = 100_000  # what a table may take off a terminal: more than any row needs


def parse_assignments(items: list[str], option: str, form: str) -> dict[str, str]:
    """Repeated ``NAME=VALUE`` options as a mapping; a one-line ConfigError naming ``option`` and the
    ``form`` it expects when an item is not one."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{option} expects {form}, got '{item}'")
        out[name] = value
    return out


def print_table(table: Table, to: Console | None = None) -> None:
    """Print ``table`` on ``to`` (default: stdout) -- the one way every command prints a table.

    On a terminal it fits the terminal's width. Off one (``| cat``, a file, a CI log) it is
    printed at its natural width: nothing there to fit, and a cell wrapped to 80 columns breaks
    a row into one-word fragments that neither a reader nor ``grep`` can follow.
    """
    out = to or console
    if out.is_terminal:
        out.print(table)
        return
    natural = out.measure(table, options=out.options.update_width(UNBOUNDED_WIDTH)).maximum
    Console(file=out.file, width=max(natural, 1), emoji=False, color_system=None).print(table)


EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


def run_cli(app: typer.Typer) -> None:
    """Run ``app``; a tierflow error becomes ``error: <message>`` on stderr and a non-zero exit."""
    try:
        app()
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except (RecoverableError, TierflowError) as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


@contextmanager
def spinner(description: str) -> Iterator[None]:
    """A transient progress line for steps that take more than a second (terminals only)."""
    if not err_console.is_terminal:
        yield
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        progress.add_task(description, total=None)
        yield


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_Handler = Callable[[int, FrameType | None], Any] | int


class StopSignals:
    """SIGINT and SIGTERM ask a long-running command to stop cleanly, whatever it inherited.

    A process started from a non-interactive shell's background job (a script, a service
    manager, a CI runner) inherits SIGINT as ignored, so Python never raises
    KeyboardInterrupt; a command that stopped only through it would keep running. Inside
    ``with StopSignals() as stop:`` both signals are handled explicitly (``signal.signal``
    overrides an inherited ``SIG_IGN``) and the previous handlers come back on exit.

    A signal only records itself and writes one byte to a pipe -- no lock is taken, so it
    cannot deadlock the code it interrupts (``threading.Event.set`` in a handler can).
    :meth:`wait` (a thread) and :meth:`wait_async` (an asyncio loop) watch that pipe, so a
    signal that came before they started waiting is not missed. The pipe is also the
    process's wakeup fd (``signal.set_wakeup_fd``): a signal the kernel delivers to another
    thread still wakes a main thread blocked in :meth:`wait`. Outside the main thread (where
    Python cannot install handlers) nothing is installed, but :meth:`request` still stops
    the waiters.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._requested = False
        self._read_fd = self._write_fd = -1
        self._previous: dict[int, _Handler | None] = {}
        self._previous_wakeup_fd: int | None = None

    def __enter__(self) -> StopSignals:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None
        for signum, handler in self._previous.items():
            # None: a handler not installed from Python; the default is the closest we can restore
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()
        for fd in (self._read_fd, self._write_fd):
            os.close(fd)
        self._read_fd = self._write_fd = -1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.request()

    def request(self) -> None:
        """Ask for the stop (what a signal does)."""
        self._requested = True  # first: a waiter woken by the byte below must see it
        if self._write_fd < 0:  # not entered (or already left): nobody is waiting on the pipe
            return
        with contextlib.suppress(BlockingIOError):  # the pipe is full: it wakes its reader anyway
            os.write(self._write_fd, b"\0")

    @property
    def requested(self) -> bool:
        return self._requested

    def _drain(self) -> None:
        # bytes of signals whose Python handler may not have run yet: that handler writes its own
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 512):
                pass

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested or ``timeout`` seconds pass; True if requested."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._read_fd, selectors.EVENT_READ)
            while not self._requested:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if selector.select(left):
                    self._drain()
        return self._requested

    async def wait_async(self) -> None:
        """Return once a stop is requested (the running loop watches the pipe)."""
        if self._requested:
            return
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            self._drain()
            if self._requested and not woken.done():
                woken.set_result(None)

        loop.add_reader(self._read_fd, wake)
        try:
            await woken
        finally:
            loop.remove_reader(self._read_fd)
