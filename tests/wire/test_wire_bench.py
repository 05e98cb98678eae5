"""The frame-throughput benchmark returns complete, consistent rows (no timing asserts here)."""

from __future__ import annotations

import pytest

from tierflow.bench.transport import measure_frames
from tierflow.errors import InvalidInputError

KEYS = {"size_bytes", "mode", "secure_gbps", "aesgcm_gbps", "ratio_to_aesgcm", "pickle_gbps", "npsave_gbps",
        "frame_bytes", "max_abs_error"}  # fmt: skip


def test_rows_cover_every_size_and_mode() -> None:
    rows = measure_frames(sizes=[64 << 10, 128 << 10], modes=["int8", "fp16", "raw"], repeats=1)
    assert [(r["size_bytes"], r["mode"]) for r in rows] == [
        (s, m) for s in (64 << 10, 128 << 10) for m in ("int8", "fp16", "raw")
    ]
    for r in rows:
        assert set(r) == KEYS
        for key in ("secure_gbps", "aesgcm_gbps", "pickle_gbps", "npsave_gbps"):
            assert float(r[key]) > 0
        assert r["ratio_to_aesgcm"] == pytest.approx(
            float(r["secure_gbps"]) / float(r["aesgcm_gbps"]), rel=0.01
        )
    by_mode = {r["mode"]: r for r in rows if r["size_bytes"] == 64 << 10}
    assert by_mode["raw"]["max_abs_error"] == 0.0
    assert int(by_mode["int8"]["frame_bytes"]) < (64 << 10) // 3  # a quarter of the bytes, plus the header
    assert int(by_mode["fp16"]["frame_bytes"]) < (64 << 10) // 2 + 100


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInputError):
        measure_frames(sizes=[1000001], repeats=1)
    with pytest.raises(InvalidInputError):
        measure_frames(sizes=[4096], repeats=0)
    with pytest.raises(InvalidInputError):
        measure_frames(sizes=[4096], modes=["int3"], repeats=1)
