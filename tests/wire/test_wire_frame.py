"""Frame layout and decoder robustness: every header byte authenticated, truncation, fuzzing."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierflow.errors import FrameError, FrameFormatError, InvalidInputError, TamperedFrameError
from tierflow.wire import frame as fr
from tierflow.wire.channel import ChannelConfig

from .conftest import make_pair

MODES = [("int8", False), ("int8", True), ("int8_channel", False), ("int8_channel", True), ("fp16", False),
         ("raw", False)]  # fmt: skip


def _tensor() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((2, 3, 4)).astype(np.float32)


def test_header_round_trips_through_the_parser() -> None:
    sender, _ = make_pair()
    frame = sender.seal(_tensor(), mode="int8_channel", axis=1, asymmetric=True)
    parsed = fr.parse_frame(frame, fr.FrameLimits())
    h = parsed.header
    assert (h.version, h.epoch, h.seq, h.shape, h.dtype) == (1, 0, 0, (2, 3, 4), np.dtype(np.float32))
    assert h.session_id == sender.session_id and not h.dp
    assert h.params.axis == 1 and h.params.asymmetric and h.params.scales.shape == (3,)
    # fixed 36 + shape 12 + 3 scales + 3 zero points + 24 payload bytes + 16 tag
    assert len(frame) == 36 + 12 + 12 + 3 + 24 + 16 == len(parsed.aad) + len(parsed.body)
    assert bytes(parsed.aad) == fr.encode_header(h)


@pytest.mark.parametrize(("mode", "asymmetric"), MODES)
def test_flipping_any_single_byte_is_rejected(mode, asymmetric) -> None:
    sender, receiver = make_pair()
    frame = sender.seal(_tensor(), mode=mode, axis=1, asymmetric=asymmetric)
    for i in range(len(frame)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(frame)
            bad[i] ^= mask
            with pytest.raises(FrameError):
                receiver.open(bytes(bad))
    assert receiver.open(frame).shape == (2, 3, 4)  # the original still opens: nothing was accepted before


def test_truncated_and_extended_frames_are_rejected() -> None:
    sender, receiver = make_pair()
    frame = sender.seal(_tensor())
    for n in range(len(frame)):
        with pytest.raises(FrameFormatError):
            receiver.open(frame[:n])
    with pytest.raises(FrameFormatError, match="describes"):
        receiver.open(frame + b"\x00")


def test_header_fields_are_authenticated_even_when_consistent() -> None:
    """Rewrite the header into another *valid* layout (same payload size): the tag still catches it."""
    sender, receiver = make_pair()
    frame = sender.seal(np.arange(24, dtype=np.float32).reshape(2, 3, 4), mode="raw")
    h = fr.parse_frame(frame, fr.FrameLimits()).header
    body = frame[len(fr.encode_header(h)) :]
    for change in (
        {"shape": (4, 3, 2)},
        {"shape": (24,)},
        {"dtype": np.dtype(np.int32)},
        {"seq": 5},
        {"epoch": 1},
    ):
        fields = {**h.__dict__, **change}
        forged = fr.encode_header(fr.FrameHeader(**fields)) + body
        with pytest.raises(TamperedFrameError):
            receiver.open(forged)


def test_limits_are_enforced_before_allocation() -> None:
    _, receiver = make_pair(ChannelConfig(limits=fr.FrameLimits(max_rank=3, max_elements=1000)))
    big_rank = fr._FIXED.pack(b"TW", 1, 0, 0, 1, 4, 0, 0, 0, receiver.session_id) + struct.pack(
        "<4I", 1, 1, 1, 1
    )
    with pytest.raises(FrameFormatError, match="rank 4"):
        receiver.open(big_rank + bytes(20))
    huge = fr._FIXED.pack(b"TW", 1, 0, 0, 1, 2, 0, 0, 0, receiver.session_id) + struct.pack(
        "<2I", 2**32 - 1, 2**32 - 1
    )
    with pytest.raises(FrameFormatError, match="elements"):
        receiver.open(huge + bytes(16))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"magic": b"XX"}, "magic"),
        ({"version": 2}, "version"),
        ({"flags": 0x80}, "flags"),
        ({"mode": 9}, "mode"),
        ({"dtype": 99}, "dtype"),
        ({"mode": 2, "dtype": 8}, "cannot carry"),  # int8 mode on int32 data
        ({"flags": 1, "mode": 1}, "asymmetric"),
        ({"mode": 3, "axis": 2}, "axis"),
        ({"mode": 0, "axis": 1}, "no axis"),
    ],
)
def test_malformed_fixed_headers(fields, match) -> None:
    values = {"magic": b"TW", "version": 1, "flags": 0, "mode": 0, "dtype": 1, "axis": 0} | fields
    v = values
    head = fr._FIXED.pack(
        v["magic"], v["version"], v["flags"], v["mode"], v["dtype"], 2, v["axis"], 0, 0, bytes(16)
    )
    with pytest.raises(FrameFormatError, match=match):
        fr.parse_frame(head + struct.pack("<2I", 1, 1) + bytes(64), fr.FrameLimits())


def test_bad_scales_are_rejected() -> None:
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        head = fr._FIXED.pack(b"TW", 1, 0, 2, 1, 1, 0, 0, 0, bytes(16)) + struct.pack("<I", 3)
        with pytest.raises(FrameFormatError, match="scale"):
            fr.parse_frame(head + struct.pack("<f", scale) + bytes(3 + 16), fr.FrameLimits())


def test_non_bytes_input_is_a_frame_error() -> None:
    _, receiver = make_pair()
    for junk in ("a string", 12, None, np.zeros((3, 3), np.float32)[:, 1]):
        with pytest.raises(FrameError):
            receiver.open(junk)  # type: ignore[arg-type]


def test_unsupported_dtype_is_refused_on_the_sending_side() -> None:
    sender, _ = make_pair()
    with pytest.raises(InvalidInputError, match="cannot travel"):
        sender.seal(np.ones(3, np.complex64), mode="raw")


def test_nonce_is_epoch_then_sequence() -> None:
    assert fr.nonce(1, 2) == bytes([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2])


# --- property tests --------------------------------------------------------------------------------

_SENDER, _RECEIVER = make_pair()
_FRAMES = [_SENDER.seal(_tensor(), mode=m, axis=1, asymmetric=a) for m, a in MODES]


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(_FRAMES)))
    kind = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete", "splice"]))
    pos = draw(st.integers(0, len(frame) - 1))
    if kind == "flip":
        frame[pos] ^= draw(st.integers(1, 255))
    elif kind == "set":
        frame[pos : pos + 8] = draw(st.binary(min_size=1, max_size=8))
    elif kind == "truncate":
        del frame[pos:]
    elif kind == "extend":
        frame += draw(st.binary(min_size=1, max_size=32))
    elif kind == "insert":
        frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
        del frame[pos : pos + draw(st.integers(1, 8))]
    else:  # a piece of another valid frame
        other = draw(st.sampled_from(_FRAMES))
        frame[pos:] = other[pos:]
    return bytes(frame)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated=mutations())
def test_any_mutation_of_a_valid_frame_is_rejected(mutated: bytes) -> None:
    if mutated in _FRAMES:
        return  # a splice can reproduce a valid frame; nothing was mutated
    with pytest.raises(FrameError):
        _RECEIVER.open(mutated)


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """Random bytes, half of them behind a well-formed fixed header so the fuzzer reaches deep checks."""
    tail = draw(st.binary(max_size=200))
    if draw(st.booleans()):
        return tail
    rank = draw(st.integers(0, 10))
    head = fr._FIXED.pack(
        b"TW", 1, draw(st.integers(0, 3)), draw(st.integers(0, 4)), draw(st.integers(0, 13)), rank,
        draw(st.integers(0, 4)), draw(st.integers(0, 3)), draw(st.integers(0, 2**64 - 1)),
        draw(st.sampled_from([_RECEIVER.session_id, bytes(16)])),
    )  # fmt: skip
    dim = st.integers(0, 2**32 - 1) | st.integers(0, 5)
    dims = struct.pack(f"<{rank}I", *draw(st.lists(dim, min_size=rank, max_size=rank)))
    return head + dims + tail


@settings(max_examples=500, deadline=None)
@given(data=plausible_frames())
def test_fuzzed_input_only_ever_raises_frame_errors(data: bytes) -> None:
    try:
        _RECEIVER.open(data)
    except FrameError:
        return
    pytest.fail("random bytes were accepted as a frame")
