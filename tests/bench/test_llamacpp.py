"""The llama.cpp anchor's runner (bench/llamacpp.py), against stand-in binaries: the real ones come
from bench/anchors/llamacpp/measure.sh, which CI does not build."""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, cli
from tierflow.bench.generate import rounds_against_anchor
from tierflow.bench.llamacpp import LlamaCpp
from tierflow.errors import ConfigError

# answers like llama-bench -o json; with --rpc it first connects to every server it was given
FAKE_BENCH = """
import json, socket, sys
args = sys.argv[1:]
if "--fail" in open(args[args.index("-m") + 1]).read():
    print("error: cannot load model", file=sys.stderr)
    sys.exit(1)
assert args[args.index("-t") + 1] == "1" and args[args.index("-p") + 1] == "0"
tokens = int(args[args.index("-n") + 1])
rate = 100.0 + tokens
if "--rpc" in args:
    for address in args[args.index("--rpc") + 1].split(","):
        host, port = address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()
    rate = 80.0 + tokens + float(args[args.index("-ngl") + 1])
print(json.dumps([{"n_gen": tokens, "avg_ts": rate}]))
"""

# listens like ggml-rpc-server -H host -p port until terminated
FAKE_SERVER = """
import socket, sys
args = sys.argv[1:]
listener = socket.create_server((args[args.index("-H") + 1], int(args[args.index("-p") + 1])))
while True:
    listener.accept()[0].close()
"""


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "build" / "bin"
    bin_dir.mkdir(parents=True)
    _script(bin_dir / "llama-bench", FAKE_BENCH)
    _script(bin_dir / "ggml-rpc-server", FAKE_SERVER)
    (tmp_path / "llama-8x512-f32.gguf").write_text("weights")
    return tmp_path


def _refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_folder_without_a_build_names_measure_sh(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="measure.sh"):
        LlamaCpp.find(tmp_path)


def test_a_shape_without_a_model_or_a_split_is_refused(work: Path) -> None:
    with pytest.raises(ConfigError, match="llama-24x1024-f32.gguf"):
        LlamaCpp.find(work, ("24x1024",))
    with pytest.raises(ConfigError, match="no split for shape"):
        LlamaCpp.find(work, ("4x256",))


def test_one_process_and_split_rates_come_from_llama_bench(work: Path) -> None:
    llama = LlamaCpp.find(work, ("8x512",))
    assert llama.one_process("8x512", 64) == 164.0
    with llama.servers() as servers:
        assert len(set(servers)) == 2  # two servers on two ports
        # the stand-in connects to both servers before answering, and the 8x512 split offloads 6 layers
        assert llama.split("8x512", 32, servers) == 80.0 + 32 + 6
    assert all(_refused(a) for a in servers)  # stopped on leaving


def test_a_failing_llama_bench_reports_its_error(work: Path) -> None:
    (work / "llama-8x512-f32.gguf").write_text("--fail")
    with pytest.raises(RuntimeError, match="cannot load model"):
        LlamaCpp.find(work, ("8x512",)).one_process("8x512", 8)


def test_a_server_that_exits_is_reported(work: Path) -> None:
    _script(
        work / "build" / "bin" / "ggml-rpc-server",
        "import sys\nprint('cannot bind to port', file=sys.stderr)\nsys.exit(3)\n",
    )
    llama = LlamaCpp.find(work)
    with pytest.raises(RuntimeError, match="exited with 3: cannot bind to port"), llama.servers():
        pass


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--large", "", "--profiles", "loopback"), "--large"),  # no Llama: nothing to compare
        (("--large", "8x512", "--profiles", "wifi"), "loopback"),  # only over loopback
    ],
)
def test_the_cli_refuses_an_anchor_it_would_not_run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    work: Path,
    args: tuple[str, ...],
    fragment: str,
) -> None:
    code, _, err = cli(capsys, monkeypatch, "bench", "generate", "--llamacpp", str(work), *args)
    assert_one_line_error(code, err, fragment)


def test_the_cli_names_a_missing_build(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    args = ("--llamacpp", str(tmp_path), "--large", "8x512", "--profiles", "loopback")
    code, _, err = cli(capsys, monkeypatch, "bench", "generate", *args)
    assert_one_line_error(code, err, "measure.sh")


def test_rounds_against_the_anchor_count_ties_as_at_or_above_and_take_the_median_difference() -> None:
    figures = rounds_against_anchor([0.90, 0.80, 1.00, 0.95], [0.85, 0.90, 1.00, 0.99])
    assert figures["rounds_at_or_above_llamacpp"] == "2 of 4"  # ahead in one, level in one
    assert figures["median_round_difference_vs_llamacpp"] == pytest.approx(-0.02)  # of +.05 -.1 0 -.04


def test_rounds_against_the_anchor_need_the_same_rounds_on_both_sides() -> None:
    with pytest.raises(ValueError, match="same rounds"):
        rounds_against_anchor([0.9, 0.8], [0.9])
