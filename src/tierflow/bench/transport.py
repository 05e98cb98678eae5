"""Frame throughput: the secure tensor path against raw AES-GCM, pickle and np.save, side by side.

For each size and mode, one float32 activation-like tensor (rows of 1024 features) goes through
quantize + seal + open + dequantize between two SecureChannels, and the same tensor's bytes through
AES-256-GCM seal + open, pickle dumps + loads and np.save + np.load. The contenders take turns inside
every repeat so machine noise hits them alike; each figure is the best repeat, in GB/s of the original
tensor's bytes. Everything runs on the calling thread (ONNX Runtime kernels are pinned to one thread).
"""

from __future__ import annotations

import io
import os
import pickle
import time
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tierflow.errors import InvalidInputError
from tierflow.types.quant import QuantMode
from tierflow.wire.channel import ChannelConfig, SecureChannel
from tierflow.wire.keys import SessionKeys, new_session_id

KIB, MIB = 1 << 10, 1 << 20
DEFAULT_SIZES: tuple[int, ...] = (64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB, 64 * MIB)
DEFAULT_MODES: tuple[QuantMode, ...] = (QuantMode.INT8, QuantMode.INT8_CHANNEL, QuantMode.FP16, QuantMode.RAW)
_FEATURES = 1024
_BATCH_BYTES = 16 * MIB  # small tensors run in batches this large per timing, so timer noise is amortised


def measure_frames(
    sizes: Iterable[int] = DEFAULT_SIZES,
    modes: Iterable[QuantMode | str] = DEFAULT_MODES,
    repeats: int = 5,
    *,
    seed: int = 0,
) -> list[dict[str, float | int | str]]:
    """One row per (size, mode): ``size_bytes``, ``mode``, ``secure_gbps``, ``aesgcm_gbps``,
    ``ratio_to_aesgcm``, ``pickle_gbps``, ``npsave_gbps``, plus ``frame_bytes`` and ``max_abs_error``."""
    sizes, mode_list = list(sizes), [QuantMode.parse(m) for m in modes]
    if repeats < 1:
        raise InvalidInputError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float | int | str]] = []
    for size in sizes:
        if size < 4 or size % 4:
            raise InvalidInputError(f"size must be a positive multiple of 4 bytes, got {size}")
        x = _tensor(size // 4, rng)
        inner = max(1, _BATCH_BYTES // size)
        contenders: dict[str, Callable[[], object]] = {
            "aesgcm": _aesgcm_round_trip(x),
            "pickle": partial(_pickle_round_trip, x),
            "npsave": partial(_npsave_round_trip, x),
        }
        frames: dict[QuantMode, tuple[int, float]] = {}
        for mode in mode_list:
            sender, receiver = _channel_pair(mode)
            frame = sender.seal(x)
            frames[mode] = (len(frame), float(np.max(np.abs(receiver.open(frame) - x))))
            contenders[mode.value] = partial(_secure_round_trip, sender, receiver, x)
        best = _race(contenders, repeats, inner)
        for mode in mode_list:
            secure = size * inner / best[mode.value] / 1e9
            aes = size * inner / best["aesgcm"] / 1e9
            rows.append(
                {
                    "size_bytes": size,
                    "mode": mode.value,
                    "secure_gbps": round(secure, 3),
                    "aesgcm_gbps": round(aes, 3),
                    "ratio_to_aesgcm": round(secure / aes, 3),
                    "pickle_gbps": round(size * inner / best["pickle"] / 1e9, 3),
                    "npsave_gbps": round(size * inner / best["npsave"] / 1e9, 3),
                    "frame_bytes": frames[mode][0],
                    "max_abs_error": frames[mode][1],
                }
            )
    return rows


def _tensor(elements: int, rng: np.random.Generator) -> np.ndarray:
    shape = (elements // _FEATURES, _FEATURES) if elements % _FEATURES == 0 else (elements,)
    return rng.standard_normal(shape, dtype=np.float32)


def _channel_pair(mode: QuantMode) -> tuple[SecureChannel, SecureChannel]:
    sid, k1, k2 = new_session_id(), os.urandom(32), os.urandom(32)
    config = ChannelConfig(mode=mode, axis=-1)
    return (
        SecureChannel(SessionKeys(sid, send_key=k1, recv_key=k2), config),
        SecureChannel(SessionKeys(sid, send_key=k2, recv_key=k1), config),
    )


def _aesgcm_round_trip(x: np.ndarray) -> Callable[[], object]:
    aead = AESGCM(os.urandom(32))
    data = x.reshape(-1).view(np.uint8).data
    counter = iter(range(1 << 62))

    def run() -> object:
        nonce = next(counter).to_bytes(12, "big")
        return aead.decrypt(nonce, aead.encrypt(nonce, data, None), None)

    return run


def _secure_round_trip(sender: SecureChannel, receiver: SecureChannel, x: np.ndarray) -> np.ndarray:
    return receiver.open(sender.seal(x))


def _pickle_round_trip(x: np.ndarray) -> object:
    return pickle.loads(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))


def _npsave_round_trip(x: np.ndarray) -> object:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    buf.seek(0)
    return np.load(buf, allow_pickle=False)


def _race(contenders: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict[str, float]:
    """Best wall time of ``inner`` calls of each contender; they alternate within every repeat."""
    for fn in contenders.values():
        fn()  # warm up: first-call allocations, kernel sessions
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
