"""Measure how close a compiled target is to FP32, by running both with ONNX Runtime.

Language models run windows of held-back text (the demo corpus's held-out
paragraphs, user text, or seeded random tokens for a model with no tokenizer)
through the target, through its own FP32 counterpart (same layers, full
precision) and through the full FP32 model, and report

* ``top1`` -- share of positions whose most likely next token agrees with the FP32 counterpart;
* ``top1_vs_full`` -- the same against the full FP32 model (what the layer cut costs);
* ``ppl``, ``ppl_fp32``, ``ppl_full`` -- perplexity of the target, its counterpart and the full model;
* ``ppl_ratio`` -- ``ppl / ppl_fp32``: what the precision alone costs;
* ``max_abs_error`` -- largest logit difference from the counterpart.

Other models run generated (or given) inputs and report ``max_abs_error`` over
every output, ``psnr_db`` for images (peak = the reference's value range) and
``top1`` for classifier outputs ([batch, classes]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from tierflow.model.pyramid import FidelityFloor
from tierflow.runtime.lm import CausalLM
from tierflow.runtime.session import SessionOptions, open_session

Feeds = dict[str, np.ndarray]
_OPTIONS = SessionOptions(intra_op_threads=1, providers=("CPUExecutionProvider",))


def open_cpu(model: bytes) -> ort.InferenceSession:
    """Fidelity is measured on CPU with one thread: the same numbers on every machine."""
    return open_session(model, _OPTIONS)


# --- language models ---------------------------------------------------------------------------


def lm_logits(lm: CausalLM, windows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Logits [seq, vocab] of each window, run as one prefill from an empty cache."""
    return [lm.forward(np.asarray([w], np.int64), lm.empty_cache())[0][0] for w in windows]


def perplexity(logits: Sequence[np.ndarray], windows: Sequence[Sequence[int]]) -> float:
    """exp(mean next-token negative log-likelihood) over every window."""
    nll, count = 0.0, 0
    for out, ids in zip(logits, windows, strict=True):
        x = out[:-1].astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
        targets = np.asarray(ids[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(nll / max(count, 1))


def agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    total = sum(int(x.shape[0]) for x in a)
    return same / max(total, 1)


def lm_fidelity(
    target: CausalLM, counterpart: CausalLM, full: CausalLM, windows: Sequence[Sequence[int]]
) -> dict[str, float]:
    got = lm_logits(target, windows)
    own = lm_logits(counterpart, windows)
    ref = lm_logits(full, windows)
    ppl, ppl_fp32 = perplexity(got, windows), perplexity(own, windows)
    return {
        "top1": agreement(got, own),
        "top1_vs_full": agreement(got, ref),
        "ppl": ppl,
        "ppl_fp32": ppl_fp32,
        "ppl_full": perplexity(ref, windows),
        "ppl_ratio": ppl / ppl_fp32,
        "max_abs_error": max(float(np.abs(g - o).max()) for g, o in zip(got, own, strict=True)),
    }


# --- tensors: images, classifiers, anything ----------------------------------------------------


def tensor_fidelity(
    target: ort.InferenceSession,
    counterpart: ort.InferenceSession,
    samples: Sequence[Feeds],
    image_outputs: Sequence[str] = (),
) -> dict[str, float]:
    names = [o.name for o in counterpart.get_outputs()]
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    ref: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feeds in samples:
        for n, g, r in zip(names, target.run(names, feeds), counterpart.run(names, feeds), strict=True):
            got[n].append(np.asarray(g, np.float64))
            ref[n].append(np.asarray(r, np.float64))
    metrics: dict[str, float] = {"max_abs_error": 0.0}
    for n in names:
        g, r = np.stack(got[n]), np.stack(ref[n])
        if not np.issubdtype(r.dtype, np.floating):
            continue
        metrics["max_abs_error"] = max(metrics["max_abs_error"], float(np.abs(g - r).max()))
        if n in image_outputs:
            value = psnr(g, r)
            if math.isfinite(value):  # identical outputs have no finite PSNR; max_abs_error 0 says it
                metrics["psnr_db"] = min(metrics.get("psnr_db", math.inf), value)
        if r.ndim == 3 and r.shape[-1] > 1:  # per sample [batch, classes]
            top1 = float((g.argmax(-1) == r.argmax(-1)).mean())
            metrics["top1"] = min(metrics.get("top1", 1.0), top1)
    return metrics


def psnr(got: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in dB with the reference's value range as the peak (2 for a tanh image in [-1, 1])."""
    mse = float(np.mean((got - ref) ** 2))
    peak = float(ref.max() - ref.min()) or 1.0
    if mse == 0:
        return math.inf
    return 10 * math.log10(peak * peak / mse)


# --- floors ------------------------------------------------------------------------------------


def below_floor(metrics: dict[str, float], floor: FidelityFloor) -> list[str]:
    """Each floor the measured ``metrics`` miss, as ``"top1 0.81 < 0.95"``; measures not taken are skipped."""
    misses = []
    minimums = {"top1": floor.top1, "top1_vs_full": floor.top1_vs_full, "psnr_db": floor.psnr_db}
    maximums = {"ppl_ratio": floor.ppl_ratio, "max_abs_error": floor.max_abs_error}
    for key, limit in minimums.items():
        if limit is not None and key in metrics and metrics[key] < limit:
            misses.append(f"{key} {metrics[key]:.4g} < {limit:g}")
    for key, limit in maximums.items():
        if limit is not None and key in metrics and metrics[key] > limit:
            misses.append(f"{key} {metrics[key]:.4g} > {limit:g}")
    return misses
