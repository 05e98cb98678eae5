"""Long-running commands stop cleanly on SIGINT and SIGTERM, whatever signal dispositions they inherited.

A background job of a non-interactive shell (a script, a service manager, a CI runner) starts with
SIGINT ignored; the commands must stop anyway, and take their child processes with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.processes import LineReader, popen_sigint_ignored
from tierflow.cli._common import StopSignals
from tierflow.transport.certs import init_pki

TIERFLOW = [sys.executable, "-m", "tierflow"]


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    """This process ignores SIGINT for the test's duration (as an inherited disposition would)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the helper, in this process ---------------------------------------------------------------


def test_a_signal_ignored_before_is_handled_inside_and_ignored_again_after(sigint_ignored: None) -> None:
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    with StopSignals() as stop:
        assert not stop.requested and not stop.wait(0)
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        assert stop.wait(None)  # returns at once: the request stays
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.set_wakeup_fd(wakeup_fd) == wakeup_fd  # the wakeup fd it borrowed is given back too


def test_sigterm_from_another_thread_wakes_a_blocked_wait() -> None:
    with StopSignals() as stop:
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
        sender.start()
        assert stop.wait(30)  # a timeout, not a sleep: a working handler returns at once
        sender.join()
        assert stop.signum == signal.SIGTERM


def test_wait_async_returns_on_a_signal_and_for_one_that_came_before() -> None:
    async def go() -> None:
        with StopSignals() as stop:
            asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGTERM)
            await asyncio.wait_for(stop.wait_async(), 30)
        with StopSignals() as stop:
            stop.request()  # before anyone waits
            await asyncio.wait_for(stop.wait_async(), 30)

    asyncio.run(go())


def test_a_timeout_without_a_signal_is_not_a_stop() -> None:
    with StopSignals() as stop:
        assert not stop.wait(0.01) and not stop.requested


# --- the commands, as processes started with SIGINT ignored ------------------------------------


def test_the_children_here_really_start_with_sigint_ignored() -> None:
    show = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    proc = popen_sigint_ignored([sys.executable, "-c", show], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (0, "True\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signals") / "pki"
    init_pki(root, ["device", "edge", "cloud"])
    return root


def _start(argv: list[str], log: Path) -> tuple[subprocess.Popen[str], LineReader]:
    with open(log, "w", encoding="utf-8") as stderr:
        proc = popen_sigint_ignored(
            argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    assert proc.stdout is not None
    return proc, LineReader(proc.stdout)


def _ready(lines: LineReader, timeout: float, log: Path) -> dict[str, object]:
    """The JSON line a command prints once it serves (its stderr in the failure, if it never comes)."""
    try:
        line = lines.next(timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stderr: {log.read_text()}") from None
    info: dict[str, object] = json.loads(line)
    return info


def _stop_with_sigint(proc: subprocess.Popen[str], log: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running 30 s after SIGINT; stderr: {log.read_text()}") from None
    assert code == 0, log.read_text()


@pytest.mark.slow
def test_node_started_with_sigint_ignored_stops_on_sigint(pki: Path, tmp_path: Path) -> None:
    argv = [*TIERFLOW, "node", "--tier", "cloud", "--model", "demo-vision", "--certs", str(pki),
            "--threads", "1"]
    proc, lines = _start(argv, tmp_path / "node.log")
    try:
        ready = _ready(lines, 120, tmp_path / "node.log")
        assert ready["tier"] == "cloud"
        _stop_with_sigint(proc, tmp_path / "node.log")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_up_started_with_sigint_ignored_stops_on_sigint_with_its_nodes(pki: Path, tmp_path: Path) -> None:
    argv = [*TIERFLOW, "up", "demo-vision", "--certs", str(pki), "--profile", "datacenter"]
    proc, lines = _start(argv, tmp_path / "up.log")
    nodes: list[psutil.Process] = []
    try:
        info = _ready(lines, 180, tmp_path / "up.log")  # printed once both nodes are ready
        nodes = psutil.Process(proc.pid).children()
        commands = sorted(" ".join(n.cmdline()) for n in nodes)
        assert len(commands) == 2 and "--tier cloud" in commands[0] and "--tier edge" in commands[1], commands
        _stop_with_sigint(proc, tmp_path / "up.log")
        # `up` reaps the nodes it stopped before it exits: none is left, not even a zombie
        assert not [n for n in nodes if n.is_running()], info
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for n in nodes:
            if n.is_running():
                n.kill()
