"""`tierflow run` from a real subprocess: output, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.support.cli import assert_one_line_error
from tests.support.tiny_lm import build_tiny_lm, save_tiny_lm


def tierflow(*args: str | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    argv: list[str | bytes] = [sys.executable, "-m", "tierflow", *args]
    return subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=120)


def fails_clearly(proc: subprocess.CompletedProcess[bytes], fragment: str) -> None:
    assert_one_line_error(proc.returncode, proc.stderr.decode(), fragment)


def test_help_lists_the_commands() -> None:
    proc = tierflow("--help")
    assert proc.returncode == 0
    for command in ("run", "models", "demo"):
        assert command in proc.stdout.decode()


def test_run_prints_text_provider_and_speed(tmp_path: Path) -> None:
    model = save_tiny_lm(tmp_path / "tiny.onnx")
    proc = tierflow("run", str(model), "--prompt", "the cat", "-n", "5")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith("the cat")
    err = proc.stderr.decode()
    assert "provider=CPU" in err and "tokens/s" in err and "new_tokens=5" in err


def test_missing_file(tmp_path: Path) -> None:
    fails_clearly(tierflow("run", str(tmp_path / "nope.onnx"), "-p", "x"), "no such model file")


def test_file_that_is_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    fails_clearly(tierflow("run", str(bad), "-p", "x"), "is not a valid ONNX model")


def test_truncated_onnx_file(tmp_path: Path) -> None:
    data = build_tiny_lm().SerializeToString()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    fails_clearly(tierflow("run", str(bad), "-p", "x"), "is not a valid ONNX model")


def test_lm_with_inputs_tierflow_cannot_drive(tmp_path: Path) -> None:
    model = build_tiny_lm()
    model.graph.input.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["b", "s"]))
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    fails_clearly(tierflow("run", str(path), "-p", "the"), "token_type_ids")


def test_prompt_that_is_not_utf8(tmp_path: Path) -> None:
    model = save_tiny_lm(tmp_path / "tiny.onnx")
    fails_clearly(tierflow("run", str(model), "--prompt", b"the \xff cat"), "not valid Unicode")


def test_model_without_tokenizer(tmp_path: Path) -> None:
    model = save_tiny_lm(tmp_path / "tiny.onnx", tokenizer=False)
    fails_clearly(tierflow("run", str(model), "--prompt", "the"), "no tokenizer")


@pytest.mark.parametrize("args", [["-n", "-3"], ["--top-p", "2"]])
def test_bad_options_exit_non_zero(tmp_path: Path, args: list[str]) -> None:
    model = save_tiny_lm(tmp_path / "tiny.onnx")
    proc = tierflow("run", str(model), "-p", "the", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr.decode()


def test_lm_without_prompt(tmp_path: Path) -> None:
    model = save_tiny_lm(tmp_path / "tiny.onnx")
    proc = tierflow("run", str(model))
    assert proc.returncode == 2
    assert "--prompt" in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
