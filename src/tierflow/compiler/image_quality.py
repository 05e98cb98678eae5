"""How well generated images follow their prompts, read by the scene classifier.

    python -m tierflow.compiler.image_quality --model DIR \\
        [--classifier src/tierflow/model/assets/scene_classifier.onnx] [--steps 8 25] [--guidance G] \\
        [--reference] [--grid grid.png]

:func:`adherence` draws one image per prompt of a fixed list of single-object prompts
(:func:`adherence_prompts`: every kind x three colours x the three positions, day and night, on
the kind's backgrounds in turn), runs the scene classifier
(:mod:`tierflow.compiler.train_scene_classifier`) on each and reports the share where the
predicted kind, colour and position match what the prompt says (per attribute and all three
together, also split by day and night). ``--reference`` scores the renderer's own images of the
same prompts: the ceiling the classifier allows. ``--grid`` writes a captioned grid of samples.

ONNX Runtime only (no torch).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tierflow.compiler.train_scene_classifier import HEADS, open_classifier, predict
from tierflow.errors import InvalidInputError
from tierflow.model.registry import ASSETS
from tierflow.model.scenes import (
    BACKGROUNDS_OF,
    Colour,
    Kind,
    Lighting,
    Position,
    Scene,
    SceneObject,
    parse_prompt,
    prompt_of,
    render,
)
from tierflow.runtime.flow_sampler import RESOLUTION, FlowSampler

CLASSIFIER = ASSETS / "scene_classifier.onnx"
ATTRIBUTES: tuple[str, ...] = ("kind", "colour", "position")
SEED_BASE = 10_000  # image i of an adherence run starts from noise seed SEED_BASE + seed * 1000 + i
GRID_PROMPTS: tuple[str, ...] = (
    "a red car on a road at night",
    "a blue truck on the left",
    "a grey wall with a crack",
    "a yellow ball on the right on sand",
    "a white van on the right",
    "a green box on grass at night",
    "an orange cone on the left on a road",
    "a purple ball",
    "a grey pipe with a crack in front of a brick wall",
    "a black car on the left and a yellow ball on the right, on a road",
    "a small red box on the left and a large blue cone on the right, on grass",
    "a green truck in the center on a road at night",
    "a white pipe on sand",
    "a red wall on the right on grass at night",
    "a blue van on the left and a red car on the right, on a road at night",
    "an orange ball on the left and a purple box in the center and a white cone on the right, on sand",
)


def adherence_prompts() -> list[str]:
    """The fixed prompt list: 8 kinds x 3 colours (each kind its own three, all nine colours used)
    x 3 positions x day / night = 144 single-object prompts."""
    colours, positions = list(Colour), list(Position)
    prompts: list[str] = []
    for k, kind in enumerate(Kind):
        backgrounds = BACKGROUNDS_OF[kind]
        for j in range(3):
            colour = colours[(2 * k + 3 * j) % len(colours)]
            for p, position in enumerate(positions):
                for lighting in Lighting:
                    bg = backgrounds[(j + p) % len(backgrounds)]
                    scene = Scene((SceneObject(kind, colour, position=position),), bg, lighting)
                    prompts.append(prompt_of(scene))
    return prompts


def expected(prompt: str) -> dict[str, int]:
    """The class index of each attribute head that ``prompt``'s first object asks for."""
    main = parse_prompt(prompt).scene.main
    return {
        "kind": HEADS["kind"].index(str(main.kind)),
        "colour": HEADS["colour"].index(str(main.colour)),
        "position": HEADS["position"].index(str(main.position)),
    }


def score(
    images: npt.NDArray[np.uint8], prompts: Sequence[str], classifier: str | Path = CLASSIFIER
) -> dict[str, float]:
    """The share of ``images`` (uint8 [N, 64, 64, 3], one per prompt) whose classified kind,
    colour and position match their prompt: per attribute, ``all``, and each by day / night."""
    if len(images) != len(prompts) or not prompts:
        raise InvalidInputError(f"need one image per prompt (>= 1), got {len(images)} and {len(prompts)}")
    session = open_classifier(classifier)
    predicted = predict(session, np.asarray(images))
    want = [expected(p) for p in prompts]
    hits = {a: np.asarray([predicted[a][i] == w[a] for i, w in enumerate(want)]) for a in ATTRIBUTES}
    hits["all"] = np.logical_and.reduce([hits[a] for a in ATTRIBUTES])
    night = np.asarray([parse_prompt(p).scene.lighting is Lighting.NIGHT for p in prompts])
    report: dict[str, float] = {}
    for name, h in hits.items():
        report[name] = float(h.mean())
        for label, mask in (("day", ~night), ("night", night)):
            if mask.any():
                report[f"{name}_{label}"] = float(h[mask].mean())
    report["n"] = float(len(prompts))
    return report


def generate(
    sampler: FlowSampler,
    prompts: Sequence[str],
    steps: int,
    guidance: float | None = None,
    seed: int = 0,
    batch: int = 16,
) -> npt.NDArray[np.uint8]:
    """One image per prompt, image i from noise seed ``SEED_BASE + 1000 * seed + i``."""
    out = np.empty((len(prompts), sampler.resolution, sampler.resolution, 3), np.uint8)
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start : start + batch])
        seeds = [SEED_BASE + 1000 * seed + start + i for i in range(len(chunk))]
        out[start : start + len(chunk)] = sampler.sample_batch(chunk, seeds, steps, guidance)
    return out


def adherence(
    model_dir: str | Path | None = None,
    classifier: str | Path = CLASSIFIER,
    steps: int = 25,
    guidance: float | None = None,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
    threads: int = 1,
    sampler: FlowSampler | None = None,
) -> dict[str, float]:
    """Generate one image per prompt (default :func:`adherence_prompts`) with ``steps`` Euler
    steps and guidance ``guidance`` (None: the model's default), classify them, and report the
    matching shares (see :func:`score`) with ``steps``, ``guidance`` and ``seconds``."""
    prompts = list(adherence_prompts() if prompts is None else prompts)
    sampler = sampler or FlowSampler.open(model_dir, threads)
    g = sampler.default_guidance if guidance is None else float(guidance)
    started = time.perf_counter()
    images = generate(sampler, prompts, steps, g, seed)
    elapsed = time.perf_counter() - started
    return score(images, prompts, classifier) | {"steps": float(steps), "guidance": g, "seconds": elapsed}


def reference_adherence(
    classifier: str | Path = CLASSIFIER, prompts: Sequence[str] | None = None, seed: int = 0
) -> dict[str, float]:
    """:func:`score` of the renderer's own images of the prompts' scenes: the classifier's ceiling."""
    prompts = list(adherence_prompts() if prompts is None else prompts)
    images = np.stack(
        [
            render(parse_prompt(p).scene, RESOLUTION, SEED_BASE + 1000 * seed + i).image
            for i, p in enumerate(prompts)
        ]
    )
    return score(images, prompts, classifier)


def grid(
    images: npt.NDArray[np.uint8], captions: Sequence[str] = (), cols: int = 4, scale: int = 3
) -> npt.NDArray[np.uint8]:
    """Tile images [N, H, W, 3] into one image, each scaled up ``scale`` x (nearest) and captioned."""
    from PIL import Image, ImageDraw

    n, h, w = images.shape[:3]
    rows = -(-n // cols)
    cell_w, cap_h = w * scale, (24 if captions else 0)
    cell_h = h * scale + cap_h
    sheet = Image.new("RGB", (cols * (cell_w + 4), rows * (cell_h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x, y = (i % cols) * (cell_w + 4), (i // cols) * (cell_h + 4)
        tile = Image.fromarray(images[i]).resize((cell_w, h * scale), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y + cap_h))
        if captions:
            text = captions[i]
            per_line = max(cell_w // 6, 8)
            draw.text((x + 1, y), text[:per_line], fill=(0, 0, 0))
            draw.text((x + 1, y + 11), text[per_line : 2 * per_line], fill=(0, 0, 0))
    return np.asarray(sheet, np.uint8)


def save_grid(
    path: str | Path,
    sampler: FlowSampler,
    prompts: Sequence[str] = GRID_PROMPTS,
    steps: int = 25,
    guidance: float | None = None,
    seed: int = 0,
) -> Path:
    """Sample ``prompts`` and write their captioned grid as PNG."""
    from PIL import Image

    images = generate(sampler, prompts, steps, guidance, seed)
    out = Path(path)
    Image.fromarray(grid(images, prompts)).save(out)
    return out


def _line(report: dict[str, float]) -> str:
    parts = " ".join(f"{a} {report[a]:.3f}" for a in (*ATTRIBUTES, "all"))
    split = " ".join(f"all_{x} {report.get(f'all_{x}', float('nan')):.3f}" for x in ("day", "night"))
    return f"{parts} ({split}; n {int(report['n'])})"


def main(argv: Sequence[str] | None = None, out: Callable[[str], Any] = print) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, help="folder with text_encoder.onnx and denoiser.onnx (default: bundled)"
    )
    ap.add_argument("--classifier", type=Path, default=CLASSIFIER)
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 25])
    ap.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", action="store_true", help="also score the renderer's own images")
    ap.add_argument("--grid", type=Path, help="write a grid of GRID_PROMPTS samples here (largest --steps)")
    ap.add_argument("--json", type=Path, help="write the reports here")
    args = ap.parse_args(argv)
    sampler = FlowSampler.open(args.model, args.threads)
    reports: dict[str, dict[str, float]] = {}
    if args.reference:
        reports["reference"] = reference_adherence(args.classifier, seed=args.seed)
        out(f"renderer (classifier ceiling): {_line(reports['reference'])}")
    for steps in args.steps:
        rep = adherence(args.model, args.classifier, steps, args.guidance, seed=args.seed, sampler=sampler)
        reports[f"steps_{steps}"] = rep
        out(f"steps {steps} guidance {rep['guidance']:g}: {_line(rep)} [{rep['seconds']:.0f} s]")
    if args.grid:
        save_grid(args.grid, sampler, GRID_PROMPTS, max(args.steps), args.guidance, args.seed)
        out(f"grid: {args.grid}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")


if __name__ == "__main__":
    main()
