"""A real, throwaway redis-server for tests: a free port, a temp dir, no persistence.

Missing redis-server is a test failure, not a skip: CI installs it (.ci/run), and a shared
context store that is never exercised would rot silently.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

START_TIMEOUT_S = 15.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_ping(proc: subprocess.Popen[bytes], url: str, deadline: float) -> bool:
    """Poll PING until it answers (True), the server exits or the deadline passes (False)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if client.ping():
                    return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def redis_server() -> Iterator[str]:
    """Start redis-server on a free port in a temp dir; yield its url; stop it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: the Redis context store tests need a real server "
            "(apt-get install redis-server; .ci/run installs it)",
            pytrace=False,
        )
    with tempfile.TemporaryDirectory(prefix="tierflow-redis-") as tmp:
        last_output = ""
        for _attempt in range(3):  # a free port can be taken between probing and binding
            port = _free_port()
            url = f"redis://127.0.0.1:{port}/0"
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            with open(f"{tmp}/redis.log", "ab") as log:  # the child keeps its own copy of the fd
                proc = subprocess.Popen(
                    [*argv, "--dir", tmp], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            try:
                if _wait_for_ping(proc, url, time.monotonic() + START_TIMEOUT_S):
                    yield url
                    return
                last_output = _log(tmp, proc)
            finally:
                _stop(proc)
        pytest.fail(f"redis-server did not answer PING: {last_output}", pytrace=False)


def _log(tmp: str, proc: subprocess.Popen[bytes]) -> str:
    try:
        with open(f"{tmp}/redis.log", encoding="utf-8", errors="replace") as f:
            return f.read()[-2000:]
    except OSError:
        return f"exit code {proc.poll()}"
