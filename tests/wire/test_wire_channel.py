"""SecureChannel: replay window, wrong keys and sessions, expected shapes, key rotation in lockstep."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tierflow.errors import (
    ConfigError,
    FrameFormatError,
    FrameShapeError,
    InvalidInputError,
    ReplayedFrameError,
    TamperedFrameError,
)
from tierflow.wire import ChannelConfig, SecureChannel, SessionKeys, parse_frame
from tierflow.wire.frame import FrameLimits

from .conftest import make_pair


def _x(seed: int = 0, shape: tuple[int, ...] = (4, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _header(frame: bytes):  # noqa: ANN202
    return parse_frame(frame, FrameLimits()).header


def test_both_directions_round_trip(pair) -> None:
    a, b = pair
    x, y = _x(1), _x(2, (3, 5, 7))
    np.testing.assert_allclose(b.open(a.seal(x, mode="raw")), x)
    np.testing.assert_allclose(a.open(b.seal(y, mode="raw")), y)
    with pytest.raises(TamperedFrameError):  # a frame does not open in the direction it was sent from
        a.open(a.seal(x))


def test_sequence_numbers_count_up(pair) -> None:
    a, _ = pair
    assert [_header(a.seal(_x())).seq for _ in range(5)] == [0, 1, 2, 3, 4]


def test_duplicate_frame_is_rejected(pair) -> None:
    a, b = pair
    frame = a.seal(_x())
    b.open(frame)
    with pytest.raises(ReplayedFrameError, match="already received"):
        b.open(frame)


def test_reordering_inside_the_window_is_accepted_and_beyond_it_rejected() -> None:
    a, b = make_pair(ChannelConfig(replay_window=8))
    frames = [a.seal(_x(i)) for i in range(20)]
    for i in (3, 1, 2, 0, 7, 5, 6, 4):  # shuffled inside the window
        np.testing.assert_allclose(b.open(frames[i]), _x(i), atol=0.05)
    b.open(frames[15])  # the window now covers 8..15
    for i in (0, 3, 7):  # stale (and 0..3 were already seen, but age is checked first)
        with pytest.raises(ReplayedFrameError, match="older than the replay window"):
            b.open(frames[i])
    for i in (8, 10, 14, 9):  # never seen and inside the window
        b.open(frames[i])
    with pytest.raises(ReplayedFrameError, match="already received"):
        b.open(frames[10])
    for i in range(16, 20):
        b.open(frames[i])


def test_wrong_key_is_rejected() -> None:
    a, _ = make_pair()
    _, stranger = make_pair(session_id=a.session_id)  # same session id, keys from another agreement
    with pytest.raises(TamperedFrameError, match="authentication"):
        stranger.open(a.seal(_x()))


def test_wrong_session_is_rejected() -> None:
    a, b = make_pair()
    keys = SessionKeys(os.urandom(16), send_key=os.urandom(32), recv_key=os.urandom(32))
    other = SecureChannel(keys)
    with pytest.raises(TamperedFrameError, match="another session"):
        other.open(a.seal(_x()))
    b.open(a.seal(_x()))


def test_receiver_states_the_shape_and_dtype_it_expects(pair) -> None:
    a, b = pair
    frame = a.seal(_x(0, (2, 16, 8)))
    with pytest.raises(FrameShapeError, match="expected"):
        b.open(frame, expect_shape=(2, 16, 9))
    with pytest.raises(FrameShapeError):
        b.open(frame, expect_shape=(2, 16))
    with pytest.raises(FrameShapeError, match="dtype"):
        b.open(frame, expect_dtype=np.float16)
    # the mismatch did not consume the frame: with the right expectation it opens
    out = b.open(frame, expect_shape=(2, None, 8), expect_dtype="float32")
    assert out.shape == (2, 16, 8)


def test_float16_tensors_come_back_as_float16(pair) -> None:
    a, b = pair
    x = _x(3, (6, 10)).astype(np.float16)
    for mode in ("int8", "int8_channel", "fp16", "raw"):
        y = b.open(a.seal(x, mode=mode))
        assert y.dtype == np.float16 and y.shape == x.shape


def test_rotation_after_n_frames_keeps_both_sides_in_lockstep() -> None:
    a, b = make_pair(ChannelConfig(rotate_after_frames=4))
    frames = [a.seal(_x(i)) for i in range(18)]
    assert [_header(f).epoch for f in frames] == [i // 4 for i in range(18)]
    assert a.send_epoch == 4
    for i, f in enumerate(frames):
        np.testing.assert_allclose(b.open(f), _x(i), atol=0.05)
    assert b.recv_epoch == 4
    # the other direction rotates on its own count
    assert _header(b.seal(_x())).epoch == 0


def test_frames_in_flight_across_a_rotation_still_open() -> None:
    a, b = make_pair(ChannelConfig(rotate_after_frames=3, replay_window=64))
    frames = [a.seal(_x(i)) for i in range(12)]  # epochs 0,0,0,1,1,1,2,2,2,3,3,3
    order = [9, 4, 0, 10, 1, 5, 11, 2, 3, 6, 7, 8]  # newer epochs arrive before older ones
    for i in order:
        np.testing.assert_allclose(b.open(frames[i]), _x(i), atol=0.05)
    assert b.recv_epoch == 3


def test_old_epoch_keys_are_dropped_after_the_grace_window() -> None:
    a, b = make_pair(ChannelConfig(rotate_after_frames=4, epoch_grace_frames=2, replay_window=64))
    frames = [a.seal(_x(i)) for i in range(10)]  # epochs 0 x4, 1 x4, 2 x2
    b.open(frames[4])  # epoch 1 arrives first; epoch 0 enters its grace
    assert b.recv_epochs_held == [0, 1]
    b.open(frames[0])  # still inside the grace: opens
    b.open(frames[5])
    assert b.recv_epochs_held == [1]
    with pytest.raises(ReplayedFrameError, match="retired"):
        b.open(frames[1])
    b.open(frames[8])  # epoch 2
    assert b.recv_epochs_held == [1, 2]


def test_rotation_by_bytes() -> None:
    a, b = make_pair(ChannelConfig(rotate_after_bytes=250, mode="int8"))
    x = _x(0, (10, 10))  # 100 payload bytes per frame
    epochs = [_header(a.seal(x)).epoch for _ in range(7)]
    assert epochs == [0, 0, 0, 1, 1, 1, 2]


def test_epoch_far_ahead_is_refused_and_forged_epochs_change_nothing() -> None:
    a, b = make_pair(ChannelConfig(rotate_after_frames=1, max_epoch_skip=3, replay_window=64))
    frames = [a.seal(_x(i)) for i in range(8)]  # epoch i for frame i
    with pytest.raises(TamperedFrameError, match="ahead"):
        b.open(frames[4])
    forged = bytearray(frames[2])
    forged[-1] ^= 1  # a frame claiming epoch 2 that does not authenticate
    with pytest.raises(TamperedFrameError):
        b.open(bytes(forged))
    assert b.recv_epoch == 0  # nothing was committed
    for i in (3, 6, 1, 2, 7, 0, 4, 5):  # reaches epoch 7 in steps of at most 3
        b.open(frames[i])
    assert b.recv_epoch == 7


def test_concurrent_receivers_accept_each_frame_exactly_once(pair) -> None:
    a, b = pair
    frames = [a.seal(_x(i, (64, 64))) for i in range(40)]
    accepted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for i, f in enumerate(frames):
            try:
                b.open(f)
            except ReplayedFrameError:
                continue
            with lock:
                accepted.append(i)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(accepted) == list(range(40))


def test_config_is_validated() -> None:
    for bad in (
        {"replay_window": 0},
        {"rotate_after_frames": 0},
        {"rotate_after_bytes": -1},
        {"max_epoch_skip": -1},
        {"mode": "int3"},
        {"limits": FrameLimits(max_rank=300)},
    ):
        with pytest.raises(ConfigError):
            ChannelConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="32 bytes"):
        SecureChannel(SessionKeys(os.urandom(16), send_key=b"short", recv_key=os.urandom(32)))


def test_sender_refuses_tensors_beyond_the_frame_limits() -> None:
    a, _ = make_pair(ChannelConfig(limits=FrameLimits(max_rank=2, max_elements=100)))
    with pytest.raises(InvalidInputError, match="rank"):
        a.seal(np.zeros((1, 1, 1), np.float32))
    with pytest.raises(InvalidInputError, match="elements"):
        a.seal(np.zeros((11, 10), np.float32))
    assert a.next_seq == 0  # refused tensors use no sequence number


_A, _B = make_pair(ChannelConfig(rotate_after_frames=7))


@settings(max_examples=80, deadline=None)
@given(
    x=hnp.arrays(
        st.sampled_from([np.float32, np.float16]),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=8),
        elements=st.floats(-1000, 1000, width=16),
    ),
    mode=st.sampled_from(["int8", "int8_channel", "fp16", "raw"]),
    asymmetric=st.booleans(),
)
def test_random_tensors_survive_the_channel(x: np.ndarray, mode: str, asymmetric: bool) -> None:
    if mode == "int8_channel" and x.ndim == 0:
        mode = "int8"
    asymmetric = asymmetric and mode.startswith("int8")
    frame = _A.seal(x, mode=mode, axis=0, asymmetric=asymmetric)
    y, header = _B.open_with_header(frame, expect_shape=x.shape, expect_dtype=x.dtype)
    assert y.shape == x.shape and y.dtype == x.dtype
    if mode in ("raw", "fp16"):
        np.testing.assert_array_equal(y, x)  # float16-representable values: fp16 is exact too
    elif x.size:
        per_slice = (-1,) + (1,) * (x.ndim - 1) if mode == "int8_channel" else ()
        scales = header.params.scales.astype(np.float64).reshape(per_slice)
        err = np.abs(y.astype(np.float64) - x.astype(np.float64))
        bound = scales / 2 + np.abs(x.astype(np.float64)) * (2**-10 if x.dtype == np.float16 else 1e-6)
        assert np.all(err <= bound)


# --- byte strings (a decode lane's messages): seal_bytes / open_bytes --------------------------------


def test_a_byte_string_is_sealed_into_the_same_frame_as_the_uint8_array() -> None:
    sid, send, recv = os.urandom(16), os.urandom(32), os.urandom(32)
    general = SecureChannel(SessionKeys(sid, send, recv))
    direct = SecureChannel(SessionKeys(sid, send, recv))
    payload = os.urandom(2053)
    for _ in range(3):  # same keys, same sequence numbers: byte for byte the same frames
        assert direct.seal_bytes(payload) == general.seal(np.frombuffer(payload, np.uint8), mode="raw")
    a, b = make_pair()
    frame = a.seal_bytes(payload)
    assert b.open(frame).tobytes() == payload  # the general open reads it


def test_open_bytes_round_trips_and_counts_sequence_numbers(pair) -> None:
    a, b = pair
    for i, size in enumerate((0, 1, 4096)):
        data = os.urandom(size)
        opened, seq = b.open_bytes(a.seal_bytes(data))
        assert (opened.tobytes(), seq) == (data, i)
    # a uint8 frame from the general seal opens too
    general, _ = b.open_bytes(a.seal(np.frombuffer(b"abc", np.uint8), mode="raw"))
    assert general.tobytes() == b"abc"


def test_open_bytes_refuses_what_open_refuses(pair) -> None:
    a, b = pair
    frame = a.seal_bytes(b"hidden state")
    tampered = bytearray(frame)
    tampered[-20] ^= 1
    with pytest.raises(TamperedFrameError):
        b.open_bytes(bytes(tampered))
    header = bytearray(frame)
    header[36] ^= 1  # the length, the header's last field
    with pytest.raises(FrameFormatError):
        b.open_bytes(bytes(header))
    b.open_bytes(frame)
    with pytest.raises(ReplayedFrameError):
        b.open_bytes(frame)
    with pytest.raises(FrameShapeError):  # a tensor frame is not a byte string
        b.open_bytes(a.seal(_x()))
    other, _ = make_pair()
    with pytest.raises(TamperedFrameError, match="another session"):
        b.open_bytes(other.seal_bytes(b"x"))


def test_byte_strings_cross_key_rotations() -> None:
    a, b = make_pair(ChannelConfig(rotate_after_frames=2))
    for i in range(7):
        data = bytes([i]) * 10
        assert b.open_bytes(a.seal_bytes(data))[0].tobytes() == data
    assert a.send_epoch == 3


def test_seal_bytes_refuses_beyond_the_frame_limits() -> None:
    a, _ = make_pair(ChannelConfig(limits=FrameLimits(max_elements=16)))
    with pytest.raises(InvalidInputError, match="frame limit"):
        a.seal_bytes(bytes(17))


def test_open_bytes_keeps_the_receivers_rank_limit_and_takes_views() -> None:
    a, b = make_pair(receiver_config=ChannelConfig(limits=FrameLimits(max_rank=0)))
    frame = a.seal_bytes(b"abc")
    with pytest.raises(FrameFormatError, match="rank"):  # as open() refuses it
        b.open_bytes(frame)
    c, d = make_pair()
    opened, _ = d.open_bytes(memoryview(c.seal_bytes(b"abc")))  # a view: the general path, same bytes
    assert opened.tobytes() == b"abc"
