"""``tierflow link``: the command runs a real emulator process between real sockets."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.processes import LineReader, popen_sigint_ignored
from tierflow.cli import app

CLI = [sys.executable, "-c", "from tierflow.cli import main; main()", "link"]


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                try:
                    while data := c.recv(4096):
                        c.sendall(data)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_list_prints_every_profile() -> None:
    result = CliRunner().invoke(app, ["link", "--list"])
    assert result.exit_code == 0
    names = [line.split(":")[0] for line in result.output.splitlines()]
    assert names == ["offline", "2g", "3g", "4g", "wifi", "5g", "datacenter"]
    assert "4g: down 30 Mbit/s, up 7.5 Mbit/s, RTT 50 ms" in result.output


@pytest.mark.slow
def test_link_shapes_between_real_sockets_and_reports(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,down_mbps,up_mbps,rtt_ms,loss\n0,20,5,40,0\n0.5,20,5,100,0\n", encoding="utf-8")
    srv, port = _echo_server()
    # started with SIGINT ignored, as a script's background job is: SIGINT must stop it all the same
    proc = popen_sigint_ignored(
        [*CLI, "--upstream", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--profile", "4g",
         "--trace", str(trace), "--interval", "0.5", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = LineReader(proc.stdout)
        first = lines.next(timeout=60)
        m = re.fullmatch(rf"link 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:{port}\n", first)
        assert m, first
        c = socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=10)
        c.sendall(b"through the link")
        got = b""
        while len(got) < 16:
            got += c.recv(64)
        assert got == b"through the link"
        lines.until("RTT 100 ms", timeout=30)  # the command saw the trace move to its second row
        lines.until("connections", timeout=30)  # and a status line follows it
        t = time.perf_counter()
        c.sendall(b"x")
        assert c.recv(1) == b"x"
        assert time.perf_counter() - t >= 0.09  # RTT 100 ms from the trace's second row
        c.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        text = lines.text(timeout=20)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        srv.close()
    assert proc.returncode == 0, err
    assert "then hold the last row; jitter from 4g" in text
    assert "profile 4g+trace: down 20 Mbit/s, up 5 Mbit/s, RTT 40 ms" in text  # first row
    assert "profile 4g+trace: down 20 Mbit/s, up 5 Mbit/s, RTT 100 ms" in text  # then the second
    assert re.search(r"\] 4g\+trace .*connections \d+ open / 1 total", text)
    assert re.search(r"stopped after [\d.]+ s: down 17 B, up 17 B, 1 connections", text)


@pytest.mark.slow  # a fresh interpreter importing the CLI takes ~2 s here
def test_a_bad_profile_is_a_one_line_error_with_exit_code_2() -> None:
    proc = subprocess.run([*CLI, "--upstream", "127.0.0.1:9", "--profile", "6g"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown link profile '6g'" in lines[0] and "datacenter" in lines[0]
