"""The phone's early-exit INT8 model on the device: a smaller, whole model the router may offer for text.

``tierflow compile`` cuts an LM's ``phone`` target at an early layer with its own exit head and
quantizes it to INT8 (demo-lm: layers 0..2 of 6, 128-token context, 17 % of the size, top-1
agreement with the full model 0.81). The device node can keep it next to its layer span
(``tierflow node --lite-model PACKAGE``); the router then has a second text offer on the device,
``early_exit`` on the text quality ladder, below ``full``. A request gets it only when its SLA
accepts it (``min_quality: early_exit``) or, degraded and labelled so, when nothing at ``full``
meets the SLA and ``offline_ok`` allows a lesser answer.

It runs the conversation's whole history (it keeps no KV between turns: the tiers' KV is the full
model's); its speed is measured once on this node's real path, the SIMULATED slowdown included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import threading
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np

from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.slowdown import SimulatedSlowdown

PROBE_PROMPT = 16  # tokens of the speed probe's prompt
PROBE_STEPS = 8


class EarlyExitLM:
    """The early-exit model, its measured speed, and a token stream that does not block the loop."""

    def __init__(self, lm: CausalLM, slowdown: float = 1.0) -> None:
        self.lm = lm
        self.max_seq_len = lm.max_seq_len
        self.layers = lm.signature.num_layers
        self._slow = SimulatedSlowdown(slowdown)
        self._speed: tuple[float, float] | None = None  # (prefill s/token, decode s/token)
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, model: bytes, options: SessionOptions | None = None, slowdown: float = 1.0
    ) -> EarlyExitLM:
        return cls(CausalLM.open(model, options), slowdown)

    def fits(self, history: int) -> bool:
        """Whether ``history`` tokens and at least one new one fit its (shorter) context."""
        return self.max_seq_len is None or history + 1 < self.max_seq_len

    def speed(self) -> tuple[float, float]:
        """Seconds per prompt token (prefill) and per generated token (decode), measured once."""
        with self._lock:
            if self._speed is None:
                started = time.perf_counter()
                past = self.lm.empty_cache()
                _, past = self.lm.forward(np.zeros((1, PROBE_PROMPT), np.int64), past)
                prefill = self._slow.stretch(("prefill", PROBE_PROMPT), started) / PROBE_PROMPT
                steps = []
                for _ in range(PROBE_STEPS):
                    t = time.perf_counter()
                    _, past = self.lm.forward(np.zeros((1, 1), np.int64), past)
                    steps.append(self._slow.stretch(("decode", 1), t))
                self._speed = (prefill, statistics.median(steps))
            return self._speed

    def predict_s(self, history: int, new: int) -> float:
        prefill, decode = self.speed()
        return prefill * history + decode * new

    async def stream(
        self, ids: Sequence[int], config: SamplingConfig, stop_ids: Sequence[int] = ()
    ) -> AsyncIterator[int]:
        """The new tokens after ``ids``, generated in a worker thread, as they come. It stops at a token
        of ``stop_ids`` (yielded), and when the consumer stops reading (a client gone)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int | BaseException | None] = asyncio.Queue()
        done = threading.Event()
        stopping = dataclasses.replace(config, stop_token_ids=(*config.stop_token_ids, *stop_ids))

        def run() -> None:
            try:
                stream = self.lm.stream_ids(list(ids), stopping)
                kind: tuple[str, int] = ("prefill", len(ids))  # the first token pays the whole history
                while not done.is_set():
                    started = time.perf_counter()
                    token = next(stream, None)
                    if token is None:
                        break
                    self._slow.stretch(kind, started)
                    kind = ("decode", 1)
                    loop.call_soon_threadsafe(queue.put_nowait, token)
            except BaseException as exc:  # carried to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = threading.Thread(target=run, name="early-exit", daemon=True)
        worker.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            done.set()
