"""Starting tier nodes as separate processes (for `tierflow up`, tests and benchmarks)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tierflow.errors import TierUnavailableError


@dataclass
class NodeProcess:
    tier: str
    process: subprocess.Popen[bytes]
    data_plane: str
    http: str
    model_id: str
    image_model_id: str | None = None  # the node's second model, its image generator, if it has one
    argv: tuple[str, ...] = ()  # how it was started (restart() runs it again on the same addresses)
    log: Path | None = None
    threads: int = 1

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def restart(self, startup_timeout: float = 60.0) -> NodeProcess:
        """Start the node again, listening where it listened (so whoever reached it reaches it again)."""
        self.stop()
        argv = [*self.argv, "--listen", self.data_plane, "--http", self.http]
        return _launch(self.tier, argv, self.log, self.threads, startup_timeout)


def start_node(
    tier: str,
    model: str | Path,
    certs: Path,
    *,
    peers: dict[str, str] | None = None,
    threads: int = 1,
    slowdown: float = 1.0,
    startup_timeout: float = 60.0,
    log: Path | None = None,
    target_override: str | None = None,
    image_model: str | Path | None = None,
    image_target: str | None = None,
    extra_args: Sequence[str] = (),
) -> NodeProcess:
    """Start ``tierflow node`` in a new process and wait for its ready line.

    ``image_model`` (and ``image_target`` of its package) gives the node an image generator next to
    ``model``. ``extra_args`` are more ``tierflow node`` options (``--http``, ``--store``, ``--spans``, ...).
    """
    argv = [
        sys.executable,
        "-m",
        "tierflow",
        "node",
        "--tier",
        tier,
        "--model",
        str(model),
        "--certs",
        str(certs),
        "--threads",
        str(threads),
        "--slowdown",
        str(slowdown),
    ]
    if target_override:
        argv += ["--target", target_override]
    if image_model is not None:
        argv += ["--image-model", str(image_model)]
        argv += ["--image-target", image_target] if image_target else []
    for name, address in (peers or {}).items():
        argv += ["--peer", f"{name}={address}"]
    argv += list(extra_args)
    return _launch(tier, argv, log, threads, startup_timeout)


def _launch(
    tier: str, argv: list[str], log: Path | None, threads: int, startup_timeout: float
) -> NodeProcess:
    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 -- owned by the child
    env = {**os.environ, "OMP_NUM_THREADS": str(max(threads, 1))}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=env)
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + startup_timeout
    line = b""
    while time.monotonic() < deadline and process.poll() is None:
        if selector.select(timeout=0.2):
            line = process.stdout.readline()
            break
    selector.close()
    if not line:
        code = process.poll()
        process.kill()
        why = f"exit code {code}" if code is not None else f"not ready within {startup_timeout:g} s"
        raise TierUnavailableError(f"{tier} node did not start ({why})")
    info = json.loads(line)
    return NodeProcess(
        tier,
        process,
        info["data_plane"],
        info["http"],
        info["model_id"],
        info.get("image_model_id"),
        argv=tuple(argv),
        log=log,
        threads=threads,
    )
