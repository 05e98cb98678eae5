"""Train the scene attribute classifier on procedural renders and export it to ONNX.

    python -m tierflow.compiler.train_scene_classifier \\
        --out src/tierflow/model/assets/scene_classifier.onnx \\
        [--steps 3000] [--batch 64] [--seed 0] [--eval 1000]

The classifier reads a 64 x 64 render of a single-object scene (:mod:`tierflow.model.scenes`) and
names four attributes of its object, one head each: the kind (8 classes), the colour (9), the
position (left / center / right) and whether it has a crack. It is the quality check of the
text-to-image model: render or generate an image for a prompt, classify it, compare with what the
prompt says (:func:`tierflow.model.scenes.parse_prompt` gives the stated attributes).

The ONNX model (opset 17) takes ``image``: float32 [N, 3, 64, 64], RGB in [0, 1] (see
:func:`tierflow.runtime.image_result.unit_nchw`), and returns one logits tensor per head
(``kind``, ``colour``, ``position``, ``crack``), [N, classes] each; the class names ride in the
metadata (``tierflow.config`` ``heads``), the training run and its held-out accuracy in ``tierflow.training``.

Every training batch is rendered fresh: scene ``i`` of the run comes from the random stream
``[0, seed, i]``, while :func:`evaluate` draws its held-out scenes from ``[1, seed, i]``, so the
two never share a stream. A fixed ``--seed`` and ``--steps`` repeat the run exactly (on one
thread). torch is needed for training only; :func:`evaluate` and :func:`predict` need ONNX
Runtime alone.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tierflow.errors import InvalidInputError
from tierflow.model import metadata as md
from tierflow.model.scenes import CRACKABLE, Colour, Kind, Position, Scene, random_scene, render
from tierflow.runtime.image_result import unit_nchw
from tierflow.types.models import ModelKind

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

INPUT_SIZE = 64
INPUT = "image"
#: The heads, in output order, and their class names (a class's index is its position here).
HEADS: dict[str, tuple[str, ...]] = {
    "kind": tuple(str(k) for k in Kind),
    "colour": tuple(str(c) for c in Colour),
    "position": tuple(str(p) for p in Position),
    "crack": ("no", "yes"),
}
TRAIN_STREAM, HELDOUT_STREAM = 0, 1
WIDTHS = (24, 48, 64, 64, 96)  # conv channels; a 2x2 max-pool follows every conv but the fourth
HIDDEN = 192


# --- data --------------------------------------------------------------------------------------


def scene_at(stream: int, seed: int, index: int) -> tuple[Scene, int]:
    """Scene ``index`` of a stream and the seed it is rendered with: single-object scenes over
    the whole grammar, day and night, a crack on half of the pipes and walls."""
    rng = np.random.default_rng([stream, seed, index])
    scene = random_scene(rng, max_objects=1)
    return scene, int(rng.integers(0, 2**31 - 1))


def labels_of(scene: Scene) -> dict[str, int]:
    """Class index of each head for ``scene``'s main (first) object."""
    main = scene.main
    return {
        "kind": HEADS["kind"].index(str(main.kind)),
        "colour": HEADS["colour"].index(str(main.colour)),
        "position": HEADS["position"].index(str(main.position)),
        "crack": int(scene.crack),
    }


def render_batch(
    stream: int, seed: int, start: int, count: int, size: int = INPUT_SIZE
) -> tuple[npt.NDArray[np.uint8], dict[str, npt.NDArray[np.int64]], list[Scene]]:
    """Scenes ``start .. start + count - 1`` of a stream: images [count, size, size, 3] uint8,
    labels per head [count], and the scenes."""
    images = np.empty((count, size, size, 3), np.uint8)
    labels: dict[str, list[int]] = {head: [] for head in HEADS}
    scenes = []
    for k in range(count):
        scene, render_seed = scene_at(stream, seed, start + k)
        images[k] = render(scene, size, render_seed).image
        for head, value in labels_of(scene).items():
            labels[head].append(value)
        scenes.append(scene)
    return images, {h: np.asarray(v, np.int64) for h, v in labels.items()}, scenes


# --- the model ---------------------------------------------------------------------------------


def build_model() -> torch.nn.Module:
    """A small CNN: five 3x3 conv + BN + ReLU layers (max-pooled to 4 x 4), one hidden layer,
    one linear head per attribute. ~0.4 M parameters."""
    import torch
    from torch import nn

    class SceneClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            c_in = 3
            for i, c_out in enumerate(WIDTHS):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                if i != 3:
                    layers.append(nn.MaxPool2d(2))
                c_in = c_out
            self.trunk = nn.Sequential(*layers)
            side = INPUT_SIZE // 16
            self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, HIDDEN), nn.ReLU())
            self.heads = nn.ModuleList(nn.Linear(HIDDEN, len(names)) for names in HEADS.values())

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            h = self.hidden(self.trunk(image))
            return tuple(head(h) for head in self.heads)

    torch.manual_seed(0)
    return SceneClassifier()


def parameter_count(model: torch.nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 2 % of the peak at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(
    steps: int,
    batch: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
    log_every: int = 100,
    threads: int = 1,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train on freshly rendered batches; returns the model (eval mode) and a summary of the run."""
    import torch
    import torch.nn.functional as F

    if steps < 1 or batch < 1:
        raise InvalidInputError(f"steps and batch must be >= 1, got {steps} and {batch}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_model()
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    warmup = min(100, max(steps // 10, 1))
    started = time.perf_counter()
    render_s = 0.0
    running: dict[str, list[float]] = {h: [] for h in HEADS}
    losses: list[float] = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        t0 = time.perf_counter()
        images, labels, _ = render_batch(TRAIN_STREAM, seed, step * batch, batch)
        render_s += time.perf_counter() - t0
        x = torch.from_numpy(unit_nchw(images))
        outputs = model(x)
        loss = torch.zeros(())
        for (head, target), logits in zip(labels.items(), outputs, strict=True):
            y = torch.from_numpy(target)
            loss = loss + F.cross_entropy(logits, y)
            running[head].append(float((logits.argmax(1) == y).float().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            accs = " ".join(f"{h} {np.mean(v):.3f}" for h, v in running.items())
            elapsed = time.perf_counter() - started
            print(
                f"step {step + 1}/{steps} lr {opt.param_groups[0]['lr']:.2e} loss {np.mean(losses):.4f} "
                f"train acc: {accs} [{elapsed / 60:.1f} min, render {render_s / elapsed:.0%}]",
                flush=True,
            )
            running = {h: [] for h in HEADS}
            losses = []
    model.eval()
    run = {
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "scenes": steps * batch,
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "parameters": parameter_count(model),
    }
    return model, run


def export_onnx(
    model: torch.nn.Module, path: Path, training: Mapping[str, Any] | None = None, opset: int = 17
) -> None:
    """Write ``model`` to ``path`` (batch axis dynamic) with its heads and run in the metadata."""
    import onnx
    import torch

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    names = list(HEADS)
    axes = {INPUT: {0: "batch"}} | {name: {0: "batch"} for name in names}
    tmp = path.with_suffix(path.suffix + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is wanted: cleaner graph
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=[INPUT],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    config = {
        "heads": {head: list(classes) for head, classes in HEADS.items()},
        "input": f"{INPUT}: float32 [N, 3, {INPUT_SIZE}, {INPUT_SIZE}], RGB in [0, 1]",
        "widths": list(WIDTHS),
        "hidden": HIDDEN,
    }
    del proto.metadata_props[:]
    md.write_metadata(
        proto,
        kind=ModelKind.VISION,
        input_size=INPUT_SIZE,
        config=config,
        training=dict(training or {}),
    )
    proto.doc_string = "tierflow scene classifier: kind, colour, position and crack of a scene's object"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


# --- inference and evaluation (ONNX Runtime only) ----------------------------------------------


def open_classifier(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    from tierflow.runtime.session import SessionOptions, open_session

    return open_session(path, SessionOptions(intra_op_threads=threads, providers=("CPUExecutionProvider",)))


def predict(session: ort.InferenceSession, images: npt.NDArray[np.uint8]) -> dict[str, npt.NDArray[np.int64]]:
    """The predicted class index of each head for uint8 images [N, 64, 64, 3]."""
    x = unit_nchw(images)
    if x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
        raise InvalidInputError(f"the classifier reads {INPUT_SIZE} x {INPUT_SIZE} images, not {x.shape[2:]}")
    outputs = session.run(list(HEADS), {INPUT: x})
    return {
        head: np.asarray(out).argmax(axis=1).astype(np.int64)
        for head, out in zip(HEADS, outputs, strict=True)
    }


def evaluate(onnx_path: str | Path, n: int = 1000, seed: int = 0, batch: int = 100) -> dict[str, float]:
    """Per-head accuracy over ``n`` held-out scenes (stream ``[1, seed, i]``, never trained on).

    Besides one entry per head: ``crack_on_crackable`` (crack accuracy over the pipes and walls
    only, where the question is not trivial), ``<head>_day`` / ``<head>_night``, and the counts
    ``n``, ``n_crackable``."""
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, not {n}")
    session = open_classifier(onnx_path)
    hits: dict[str, list[bool]] = {h: [] for h in HEADS}
    night: list[bool] = []
    crackable: list[bool] = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        images, labels, scenes = render_batch(HELDOUT_STREAM, seed, start, count)
        predicted = predict(session, images)
        for head in HEADS:
            hits[head] += list(predicted[head] == labels[head])
        night += [str(s.lighting) == "night" for s in scenes]
        crackable += [s.main.kind in CRACKABLE for s in scenes]
    is_night = np.asarray(night)
    report: dict[str, float] = {}
    for head, h in hits.items():
        arr = np.asarray(h)
        report[head] = float(arr.mean())
        for name, mask in (("day", ~is_night), ("night", is_night)):
            if mask.any():
                report[f"{head}_{name}"] = float(arr[mask].mean())
    mask = np.asarray(crackable)
    if mask.any():
        report["crack_on_crackable"] = float(np.asarray(hits["crack"])[mask].mean())
    report["n"] = float(n)
    report["n_crackable"] = float(mask.sum())
    return report


def _format(report: Mapping[str, float]) -> str:
    heads = " ".join(f"{h} {report[h]:.4f}" for h in HEADS)
    extra = f"crack_on_crackable {report.get('crack_on_crackable', float('nan')):.4f}"
    return f"{heads} {extra} (n {int(report['n'])}, crackable {int(report['n_crackable'])})"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where to write the ONNX model")
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps (one fresh batch each)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval", type=int, default=1000, metavar="N", help="held-out scenes to score (0: skip)")
    ap.add_argument("--evaluate-only", action="store_true", help="score an existing --out file, no training")
    args = ap.parse_args(argv)
    if args.evaluate_only:
        print(json.dumps(evaluate(args.out, args.eval or 1000, args.seed), indent=1))
        return
    model, run = train(args.steps, args.batch, args.seed, args.lr, args.log_every, args.threads)
    print(
        f"model: {run['parameters']:,} parameters; trained on {run['scenes']:,} scenes "
        f"in {run['minutes']} min",
        flush=True,
    )
    export_onnx(model, args.out, run)
    if args.eval:
        report = evaluate(args.out, args.eval, args.seed)
        print(f"held-out accuracy: {_format(report)}", flush=True)
        # store the figures in the model too (same weights; only the metadata changes)
        run["heldout"] = {k: round(v, 4) for k, v in report.items()}
        export_onnx(model, args.out, run)
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
