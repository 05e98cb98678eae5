"""``tierflow bench images``: the image pyramid of demo-image measured, target by target.

One run compiles demo-image (or takes a package) and, for each target the nodes would serve:

* **prompt adherence per resolution**: one image per prompt (a fixed spread of the single-object
  prompts of :func:`tierflow.compiler.image_quality.adherence_prompts`), box-filtered to 64 px and read
  by the scene classifier; the share whose kind, colour and position match the prompt. The
  renderer's own images of the same prompts give the classifier's ceiling in the same run.
* **cost per resolution**: seconds per image (median of ``repeats``, this machine, one thread) and
  multiply-accumulates of the stages that make it (Conv / Gemm / MatMul, counted on the graph);
* **the parameters** of the base, the edge layers and the cloud layers (from the manifest);
* **what the refiner buys**: PSNR against the true 256 px render of the light upsampler, the
  refiner and plain bilinear upsampling, all fed the renderer's 64 px image of held-out scenes; and
  the sharpness (mean gradient magnitude) of generated 256 px images with and without it;
* **edits**: "paint the car red" on rendered frames of cars of other colours, masked to the car: the
  share the classifier then reads as red, and how far the pixels outside the mask moved.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from PIL import Image

from tierflow.compiler.compiler import compile_model
from tierflow.compiler.image_quality import CLASSIFIER, adherence_prompts, reference_adherence, score
from tierflow.model import text_to_image as t2i
from tierflow.model.package import Package
from tierflow.model.scenes import Colour, parse_prompt, prompt_of, random_scene, render
from tierflow.runtime.session import SessionOptions, open_session
from tierflow.runtime.text_to_image import EDGE_FEATHER, PipelineGenerator, open_generator, touched

SEED_BASE = 20_000
HELD_OUT_STREAM = 9


def _say(on_stage: Callable[[str], None] | None, line: str) -> None:
    if on_stage is not None:
        on_stage(line)


def spread(prompts: Sequence[str], n: int) -> list[str]:
    """``n`` of ``prompts`` spread evenly over the list (it is ordered by kind, colour, position)."""
    if n >= len(prompts):
        return list(prompts)
    step = len(prompts) / n
    return [prompts[int(i * step)] for i in range(n)]


def to_64(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if pixels.shape[0] == 64:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((64, 64), Image.Resampling.BOX), np.uint8)


def sharpness(pixels: npt.NDArray[np.uint8]) -> float:
    """Mean gradient magnitude of the grey image (grey levels per pixel)."""
    grey = pixels.astype(np.float32).mean(axis=2)
    return float(np.hypot(np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1, :]).mean())


def psnr(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")


def target_generators(package: Path, threads: int) -> dict[str, PipelineGenerator]:
    pkg = Package.open(package)
    out = {}
    for name in pkg.manifest.targets:
        data = pkg.artifact(name)
        session = open_session(data, SessionOptions(intra_op_threads=threads))
        gen = open_generator(session, onnx.load_from_string(data))
        assert isinstance(gen, PipelineGenerator)
        out[name] = gen
    return out


def stage_macs(gen: PipelineGenerator, level: int, refine: bool) -> int:
    """Multiply-accumulates of the stages that make a ``level`` px image."""
    from tierflow.model.onnx_build import count_macs

    total = 0
    for stage in gen.chain(level, refine):
        part = gen.stage_model(stage)
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in part.graph.input}
        total += count_macs(part, shapes)
    return total


def measure_target(
    gen: PipelineGenerator, prompts: Sequence[str], repeats: int, on_stage: Callable[[str], None] | None
) -> dict[str, Any]:
    levels: dict[str, Any] = {}
    for refine in (False, True) if gen.has_refiner else (False,):
        for level in gen.refined_levels if refine else gen.levels:
            key = f"{level}{' refined' if refine else ''}"
            started = time.perf_counter()
            images = [
                gen.generate(text, level, refine=refine, seed=SEED_BASE + i).pixels
                for i, text in enumerate(prompts)
            ]
            report = score(np.stack([to_64(i) for i in images]), prompts, CLASSIFIER)
            seconds = [gen.generate(prompts[0], level, refine=refine, seed=SEED_BASE + r).elapsed_s
                       for r in range(repeats)]
            levels[key] = {
                "resolution": level,
                "refined": refine,
                "adherence": {k: round(report[k], 3) for k in ("kind", "colour", "position", "all")},
                "seconds": round(statistics.median(seconds), 4),
                "gmacs": round(stage_macs(gen, level, refine) / 1e9, 3),
                "sharpness": round(statistics.mean(sharpness(i) for i in images[:16]), 3),
            }
            _say(on_stage, f"  {key}: {levels[key]} [{time.perf_counter() - started:.0f} s]")
    return {"steps": gen.steps, "levels": levels}


def super_resolution(gen: PipelineGenerator, scenes: int) -> dict[str, Any]:
    """The upsamplers on the renderer's 64 px images of held-out scenes, against the true 256 px render."""
    rng = np.random.default_rng([HELD_OUT_STREAM, 0])
    light, refined, bilinear = [], [], []
    for i in range(scenes):
        scene = random_scene(rng)
        truth = render(scene, 256, seed=SEED_BASE + i).image
        low = render(scene, 64, seed=SEED_BASE + i).image
        feeds = {t2i.image_output(64): (low.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0)}
        light.append(psnr(gen.run_stage("up256", feeds), truth))
        prompt = prompt_of(scene)
        refined.append(psnr(gen.run_stage("refiner", feeds, prompt), truth))
        up = np.asarray(Image.fromarray(low).resize((256, 256), Image.Resampling.BILINEAR), np.uint8)
        bilinear.append(psnr(up, truth))
    return {
        "scenes": scenes,
        "psnr_db": {
            "bilinear": round(statistics.mean(bilinear), 2),
            "up256 (light, base)": round(statistics.mean(light), 2),
            "refiner (cloud)": round(statistics.mean(refined), 2),
        },
    }


def edits(gen: PipelineGenerator, frames: int) -> dict[str, Any]:
    """"Paint the car red" on rendered frames of cars of other colours, masked to the car."""
    colours = [c for c in Colour if c is not Colour.RED]
    hits, moved_far, moved_band, inside = 0, 0, [], []
    for i in range(frames):
        colour = colours[i % len(colours)]
        scene = parse_prompt(f"a {colour} car on a road").scene
        frame = render(scene, 256, seed=SEED_BASE + i)
        car = frame.object_ids == 1
        made = gen.edit("a red car on a road", frame.image, car, strength=0.9, seed=SEED_BASE + i).pixels
        grown = touched(car, 256)
        diff = np.abs(made.astype(np.int16) - frame.image).max(axis=2)
        moved_far += int(diff[~grown].max(initial=0))
        moved_band.append(float(diff[grown & ~car].mean()))
        inside.append(float(diff[car].mean()))
        hits += int(score(to_64(made)[None], ["a red car on a road"], CLASSIFIER)["colour"])
    return {
        "frames": frames,
        "recoloured_to_red": round(hits / frames, 3),
        "outside_mask_max_abs_change": moved_far,  # beyond the feather band: grey levels, over all frames
        "feather_band_mean_abs_change": round(statistics.mean(moved_band), 2),
        "inside_mask_mean_abs_change": round(statistics.mean(inside), 2),
        "feather_band_px": round(EDGE_FEATHER * 256 / t2i.BASE),
    }


def run_images_bench(
    package: Path | None = None,
    prompts: int = 48,
    repeats: int = 3,
    threads: int = 1,
    sr_scenes: int = 32,
    edit_frames: int = 16,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        if package is None:
            _say(on_stage, "compiling demo-image into its targets")
            package = Path(tmp) / "demo-image.tfm"
            compile_model("demo-image", package)
        manifest = Package.open(package).manifest
        gens = target_generators(package, threads)
        chosen = spread(adherence_prompts(), prompts)
        result: dict[str, Any] = {
            "prompts": len(chosen),
            "reference_adherence": {
                k: round(v, 3) for k, v in reference_adherence(CLASSIFIER, chosen).items()
                if k in ("kind", "colour", "position", "all")
            },
            "parameters": {
                "base": manifest.base.parameters,
                "edge_layers": manifest.edge_layers.parameters,
                "cloud_layers": manifest.cloud_layers.parameters,
                "edge_over_base": round(manifest.edge_layers.parameters / manifest.base.parameters, 3),
                "cloud_over_base": round(manifest.cloud_layers.parameters / manifest.base.parameters, 3),
            },
            "targets": {},
        }
        for name, gen in gens.items():
            _say(on_stage, f"target {name}")
            spec = manifest.targets[name]
            figures = measure_target(gen, chosen, repeats, on_stage)
            result["targets"][name] = {"precision": spec.precision, **figures}
        cloud = gens.get("cloud") or next(iter(gens.values()))
        if cloud.has_refiner:
            _say(on_stage, "the upsamplers on held-out renders")
            result["super_resolution"] = super_resolution(cloud, sr_scenes)
        _say(on_stage, "edits: paint the car red")
        result["edits"] = edits(gens.get("edge") or cloud, edit_frames)
    return result
