"""llama.cpp's RPC backend, measured in the same run as tierflow's split: the anchor side by side.

``bench/anchors/llamacpp/measure.sh`` builds ``llama-bench`` and ``ggml-rpc-server`` and converts
the random-init Llamas of ``tierflow bench generate --large`` to GGUF f32 in its ``work/`` folder.
Given that folder, ``tierflow bench generate --llamacpp DIR`` runs llama.cpp between its own runs
over loopback: one process, and the layers split three ways over the local process and two
``ggml-rpc-server`` processes (one thread each, 64 tokens, as measure.sh does), so that the two
``split_over_local`` figures come from the same minutes on the same machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tierflow.errors import ConfigError

# layers [0, L/3) on the local process, the next third on the first server, the rest and the head on
# the second: -ngl counts the output layer, the offloaded layers are the last -ngl of (L + output),
# -ts splits them over the servers (as measure.sh does)
SPLIT_ARGS = {
    "8x512": ("-ngl", "6", "-ts", "1/1"),
    "24x1024": ("-ngl", "17", "-ts", "15/17"),
}
SERVER_START_S = 30.0
RUN_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class LlamaCpp:
    """A measure.sh work folder: the two binaries and the converted models."""

    work: Path

    @property
    def bench(self) -> Path:
        return self.work / "build" / "bin" / "llama-bench"

    @property
    def rpc_server(self) -> Path:
        return self.work / "build" / "bin" / "ggml-rpc-server"

    def gguf(self, shape: str) -> Path:
        return self.work / f"llama-{shape}-f32.gguf"

    @classmethod
    def find(cls, work: Path, shapes: tuple[str, ...] = ()) -> LlamaCpp:
        """The folder, checked: both binaries and a model for each of ``shapes``."""
        found = cls(Path(work).resolve())
        missing = [p for p in (found.bench, found.rpc_server) if not os.access(p, os.X_OK)]
        for shape in shapes:
            if shape not in SPLIT_ARGS:
                known = ", ".join(SPLIT_ARGS)
                raise ConfigError(f"llama.cpp has no split for shape {shape!r}; known: {known}")
            if not found.gguf(shape).is_file():
                missing.append(found.gguf(shape))
        if missing:
            raise ConfigError(
                f"no llama.cpp build in {found.work}: missing {', '.join(str(p) for p in missing)}; "
                "run bench/anchors/llamacpp/measure.sh first"
            )
        return found

    def one_process(self, shape: str, tokens: int) -> float:
        """Decode tokens/s with every layer in this process, one thread."""
        return self._tokens_per_s(shape, tokens, ())

    def split(self, shape: str, tokens: int, servers: list[str]) -> float:
        """Decode tokens/s with the layers in thirds over this process and ``servers`` (two)."""
        return self._tokens_per_s(shape, tokens, ("--rpc", ",".join(servers), *SPLIT_ARGS[shape]))

    def _tokens_per_s(self, shape: str, tokens: int, extra: tuple[str, ...]) -> float:
        argv = [str(self.bench), "-m", str(self.gguf(shape)), "-p", "0", "-n", str(tokens), "-t", "1"]
        argv += ["-r", "1", "-o", "json", *extra]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=_one_thread(), check=False
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"llama-bench ran past {RUN_TIMEOUT_S:.0f} s: {' '.join(argv)}") from None
        if done.returncode != 0:
            tail = " ".join(done.stderr.split()[-40:])
            raise RuntimeError(f"llama-bench exited with {done.returncode}: {tail}")
        try:
            rows = json.loads(done.stdout)
            return float(rows[0]["avg_ts"])
        except (ValueError, LookupError, TypeError):
            raise RuntimeError(f"llama-bench printed no result: {done.stdout[:200]!r}") from None

    @contextmanager
    def servers(self, count: int = 2) -> Iterator[list[str]]:
        """``count`` ``ggml-rpc-server`` processes on loopback, one thread each; their addresses."""
        started: list[tuple[subprocess.Popen[bytes], str, Path]] = []
        logs = tempfile.TemporaryDirectory(prefix="tierflow-rpc-server-")
        try:
            for n, port in enumerate(_free_ports(count)):
                log = Path(logs.name) / f"rpc{n}.log"
                with open(log, "wb") as err:
                    process = subprocess.Popen(
                        [str(self.rpc_server), "-t", "1", "-H", "127.0.0.1", "-p", str(port)],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        env=_one_thread(),
                    )
                started.append((process, f"127.0.0.1:{port}", log))
            for process, address, log in started:
                _wait_listening(process, address, log)
            yield [address for _, address, _ in started]
        finally:
            for process, _, _ in started:
                process.terminate()
            for process, _, _ in started:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            logs.cleanup()


def _one_thread() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now (all probes held open until every port is chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _wait_listening(process: subprocess.Popen[bytes], address: str, log: Path) -> None:
    """Until ``address`` accepts a connection and ``process`` still runs after it; fails, quoting the
    process's log, if it exits."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if process.poll() is not None:
            tail = " ".join(log.read_text(errors="replace").split()[-40:])
            raise RuntimeError(f"ggml-rpc-server on {address} exited with {process.returncode}: {tail}")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                pass
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ggml-rpc-server on {address} did not listen within {SERVER_START_S:.0f} s"
                ) from None
            # the process is starting: poll again (there is no event to wait on across processes)
            time.sleep(0.05)
            continue
        if process.poll() is None:  # still running after the connection: it is the one listening
            return
