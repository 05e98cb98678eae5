"""Running the CLI inside the test process, and the one-line error every user mistake must give."""

from __future__ import annotations

import sys

import pytest

from tierflow.cli import main


def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, columns: int = 200
) -> tuple[int, str, str]:
    """``tierflow ARGS`` in this process: (exit code, stdout, stderr), on captured (non-terminal)
    output that claims to be ``columns`` wide (``COLUMNS``)."""
    monkeypatch.setattr(sys, "argv", ["tierflow", *args])
    monkeypatch.setenv("COLUMNS", str(columns))
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    """Exit code 2, no traceback, exactly one ``error:`` line that mentions ``fragment``."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in err, err
