"""Opening a model given as bytes: a large one through a temporary file that does not stay behind,
and the bytes themselves when no file can be written."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from tierflow.errors import InvalidModelError
from tierflow.model.registry import resolve_model
from tierflow.runtime import session as sessions
from tierflow.runtime.lm import CausalLM


def first_logits(lm: CausalLM) -> np.ndarray:
    logits, _ = lm.forward(np.asarray([[3, 17, 9]], np.int64), lm.empty_cache())
    return logits


@pytest.fixture
def spill_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sessions, "SPILL_BYTES", 0)  # every model goes through a file
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_large_model_in_memory_opens_through_a_file_that_is_then_removed(
    spill_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    mkstemp = tempfile.mkstemp

    def recorded(*args: object, **kwargs: object) -> tuple[int, str]:
        handle, name = mkstemp(*args, **kwargs)  # type: ignore[call-overload]
        made.append(name)
        return handle, name

    monkeypatch.setattr(tempfile, "mkstemp", recorded)
    path = resolve_model("demo-lm")
    from_bytes = CausalLM(sessions.open_session(path.read_bytes()))
    assert len(made) == 1 and Path(made[0]).parent == spill_dir
    assert list(spill_dir.iterdir()) == []
    np.testing.assert_array_equal(first_logits(from_bytes), first_logits(CausalLM.open(path)))


def test_with_no_file_to_write_the_bytes_themselves_are_opened(
    spill_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir / "missing"))  # mkstemp fails
    path = resolve_model("demo-lm")
    lm = CausalLM(sessions.open_session(path.read_bytes()))
    np.testing.assert_array_equal(first_logits(lm), first_logits(CausalLM.open(path)))


def test_a_malformed_model_in_memory_is_still_a_clear_error(spill_dir: Path) -> None:
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        sessions.open_session(b"not an onnx model at all")
    assert list(spill_dir.iterdir()) == []
