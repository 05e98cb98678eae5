"""Tables off a terminal (``| cat``, a file, a CI log) keep every row on one line."""

from __future__ import annotations

import io
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from rich.console import Console
from rich.table import Table

from tests.support.cli import cli
from tierflow.cli._common import print_table

INPUT = "an_input_tensor_with_a_long_descriptive_name"
OUTPUT = "the_output_tensor_with_an_even_longer_descriptive_name"


def long_named_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", [INPUT], [OUTPUT])],
        "long_names",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_table_on_captured_output_is_not_wrapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 columns claimed, the summary table needs ~100: wrapped, each name would break over lines
    model = long_named_model(tmp_path / "m.onnx")
    code, out, err = cli(capsys, monkeypatch, "run", str(model), "--seed", "0", columns=40)
    assert code == 0, err
    rows = {name: [line for line in out.splitlines() if name in line] for name in (INPUT, OUTPUT)}
    assert len(rows[INPUT]) == 1 and len(rows[OUTPUT]) == 1, out
    assert "2x3" in rows[INPUT][0] and "float32" in rows[INPUT][0]  # the whole row on that line
    assert "2x3" in rows[OUTPUT][0] and rows[OUTPUT][0].lstrip("│ ").startswith("out")


def test_on_a_terminal_the_table_fits_the_terminal() -> None:
    table = Table("name", "value")
    table.add_row(INPUT, OUTPUT)
    screen = io.StringIO()
    print_table(table, Console(file=screen, force_terminal=True, width=40, color_system=None))
    assert max(len(line) for line in screen.getvalue().splitlines()) <= 40
    piped = io.StringIO()
    print_table(table, Console(file=piped, width=40))
    (row,) = [line for line in piped.getvalue().splitlines() if INPUT in line]
    assert OUTPUT in row
