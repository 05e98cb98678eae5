"""Train the crack detector of the inspection scenario on SIMULATED camera frames of procedural
renders and export it to ONNX.

    python -m tierflow.compiler.train_crack_detector --variant edge \\
        --out src/tierflow/model/assets/crack_edge.onnx [--steps 1400] [--seed 0] [--eval 5000]
    python -m tierflow.compiler.train_crack_detector --variant cloud \\
        --out src/tierflow/model/assets/crack_cloud.onnx [--steps 2100] [--eval 5000] \\
        [--edge src/tierflow/model/assets/crack_edge.onnx]

The detector reads a camera's frame of a pipe or a wall (:mod:`tierflow.model.scenes`; the main
object is always crackable, half of them carry a crack, every background, day and night, both
sizes, every position, sometimes a second pipe or wall beside it) and answers where the crack is,
pixel by pixel, and whether there is one. The frames are what a camera on an inspection line
would send, SIMULATED by :mod:`tierflow.model.scenes.camera`: most cracks fainter than the
renderer's open dark line (hairline, shallow, dust-filled: 25 to 100 % of its ink), then defocus
and motion blur, vignetting, auto-exposure, white balance off by a little, and sensor noise that
the gain raises in low light (night frames are several times noisier). On the renderer's clean
pictures both variants were at 99.5 % and the larger one had nothing to add; on camera frames the
faint cracks at night are hard, and resolution and capacity tell. Three training renders in four
go through the camera; every fourth stays clean (clean frames must not be called cracked either).

It is a small U-Net: strided 3x3 convolutions down to 1/8 (edge) or 1/16 (cloud) of the side,
residual blocks (dilated at the deepest level, for context: is this dark line a crack or a brick
joint?), a decoder that adds each level's skip back up to full resolution (a crack is one or two
pixels wide at 128 px: a coarser map would lose it), a 1x1 head for the per-pixel logits, and the
image logit: a learned scale and offset of the mean of the top ``k`` pixel logits (an image has a
crack when some pixels surely are one; not the single maximum, so that one stray pixel is not
enough). Two variants share the code (:data:`VARIANTS`):

* ``edge`` reads 128 px: tens of thousands of parameters, about 1.5 ms per frame on one core.
  Its camera frames are taken at 256 px (what the camera sends) and box-filtered to 128 as the
  runtime resizes them; its clean frames are native 128 px renders and 256 px renders
  box-filtered to 128 in turn (trained on native renders alone, it called cracks on resized
  frames: finer texture, softer edges). 1,400 steps of 32 frames: about 14 minutes on one core
  here, two thirds of it making the frames;
* ``cloud`` reads 256 px (the camera frame the edge box-filters down to 128): a crack is twice as
  many pixels wide there, so short and faint ones resolve. About ten times the edge's parameters,
  the extra capacity at the coarse levels where it costs little time. Trained first on 128 px
  crops of 256 px frames (the camera applied to the whole frame first; one crop anywhere, three
  around the main object; four per frame: a step costs about what an edge step does), then on
  whole 256 px frames for the last 30 % of the steps (crops miss the top of the frame, where the
  night sky's stars and moon are). 2,100 steps, half again the edge's (a ten times larger
  network on noisy frames; its step costs less than the edge's, whose frames cost more to make):
  about 13 minutes here. The image loss counts on whole frames only: a crop that cuts a
  crack leaves a few crack pixels whose image label says less than the pixels do. The net is fully
  convolutional and its image logit reads the top pixels, which a crop and a whole frame have
  alike, so both phases train one graph. The exported cloud graph also reads the mirror image and
  averages the two answers.

Training labels are what is in view: a crack hidden behind the other object (or outside a crop)
is not there to be seen; a faint crack is still a crack. Held-out figures count the scene's crack,
seen or not.

Loss: pixel BCE with the crack pixels weighted up (they are ~0.5 % of a cracked image) plus a soft
dice over the batch (it rewards overlap, not a wide blur), plus the image-level BCE.

The ONNX model (opset 17) reads ``image``: float32 [N, 3, S, S], RGB in [0, 1] and returns
``crack_prob`` [N, 1, S, S] (sigmoid applied) and ``crack_score`` [N] (the image's crack
probability). Metadata: ``tierflow.kind`` ``vision``, ``tierflow.input_size`` S, ``tierflow.config``
(``kind`` = ``crack-detector``, the variant, the architecture), ``tierflow.training`` (the run and
the held-out figures); a JSON file beside the model holds the same plus the training log.

Every training batch is made fresh: scene ``i`` of the run comes from the random stream
``[0, seed, i]`` and its crack contrast and camera from ``[0, seed, i, 2]``; :func:`evaluate` and
:func:`escalation` draw held-out scenes from ``[1, seed, i]`` (camera ``[1, seed, i, 2]``), so the
two never share a stream. A fixed ``--seed`` and ``--steps`` repeat the run exactly (on one
thread). torch is needed for training only; :func:`evaluate` and :func:`escalation` need ONNX
Runtime alone (:mod:`tierflow.runtime.crack_detector`). Both score the camera's 256 px frames,
which each detector resizes to its side (the inspection endpoint's case), so they are also the
like-for-like comparison of the two variants; ``evaluate(..., camera=False)`` scores clean renders
at the detector's own side. :func:`escalation` sends the edge's least confident 10 % up, and the
frames below the endpoint's ``escalate_below`` (0.9), and says how many frames each variant gets
wrong that the other gets right (with the exact sign test of the split). The command stores the
camera figures (``heldout``), the clean ones (``heldout_clean``) and, given ``--edge``, escalation
(``escalation``). ``--evaluate-only`` prints them for an existing file; ``--rescore`` scores a
trained file again and stores the figures (after the edge a cloud escalates from was retrained,
say).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tierflow.compiler.train_scene_classifier import lr_at, parameter_count
from tierflow.errors import InvalidInputError
from tierflow.model import metadata as md
from tierflow.model.scenes import CRACKABLE, Scene, random_scene, render
from tierflow.model.scenes.camera import CAMERA_SIDE, inspection_frame
from tierflow.model.scenes.grammar import RenderedScene
from tierflow.runtime.crack_detector import (
    DETECTOR_KIND,
    INPUT,
    PROB,
    SCORE,
    Box,
    CrackDetector,
    Detection,
    box_of,
    resize,
)
from tierflow.runtime.image_result import unit_nchw
from tierflow.types.models import ModelKind

if TYPE_CHECKING:
    import torch

TRAIN_STREAM, HELDOUT_STREAM = 0, 1
MAX_OBJECTS = 2  # the pipe or wall inspected, sometimes a second (never cracked) one beside it
CRACK_PROBABILITY = 0.5
POS_WEIGHT = 8.0  # crack pixels in the pixel BCE: they are rare and thin
# the inspection endpoint's default (tierflow.engine.inspection.ESCALATE_BELOW; the compiler may not
# import the engine, a test checks the two agree)
ESCALATE_BELOW = 0.9


@dataclass(frozen=True)
class Variant:
    """One size of the detector. Level ``k`` runs at ``size / 2**k`` with ``widths[k]`` channels
    and ``blocks[k]`` residual 3x3 blocks; the deepest level's blocks are dilated 1, 2, 4, ...
    for context (is this dark line a crack or a brick joint?)."""

    name: str
    size: int  # the side it reads (renders are made at this size)
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    steps: int
    batch: int  # training images (or crops) per step
    lr: float
    crop: int = 0  # train on crops of this side (0: whole frames); the network is fully convolutional
    crops: int = 1  # crops per render (renders cost more than the network at 256 px)
    whole_from: float = 1.0  # from this share of the steps on, whole frames (batch / crops of them)
    topk: int = 4  # the image logit reads the mean of the top ``topk`` pixel logits
    sources: tuple[int, ...] = ()  # whole frames rendered at these sides in turn, resized (multiples)
    flip: bool = False  # the exported graph also reads the mirror image and averages (2x the time)
    clean_every: int = 4  # every n-th training render stays clean; the others go through the camera


VARIANTS: dict[str, Variant] = {
    # the edge reads the camera's 256 px frames box-filtered to 128 px; its clean frames are
    # native renders and box-filtered ones in turn
    "edge": Variant(
        "edge", 128, (8, 16, 24, 32), (0, 1, 1, 2), steps=1400, batch=32, lr=4e-3, topk=4, sources=(128, 256)
    ),
    # the cloud reads 256 px: a crack is twice as many pixels wide, the short and faint ones
    # resolve. 128 px crops (four per render) learn the local features fast; whole frames for
    # the last 30 % of the steps teach the image head and the map the whole frame (the night
    # sky's stars and moon sit at the top, where few crops reach)
    "cloud": Variant(
        "cloud",
        256,
        (8, 16, 32, 64, 128),
        (0, 1, 2, 2, 2),
        steps=2100,  # half again the edge's steps: a larger net on noisy frames; about 13 min here
        batch=32,
        lr=4e-3,
        crop=128,
        crops=4,
        whole_from=0.7,
        topk=8,  # a crack has twice the pixels at 256 px
        flip=True,
    ),
}


# --- data --------------------------------------------------------------------------------------


def scene_at(stream: int, seed: int, index: int) -> tuple[Scene, int]:
    """Scene ``index`` of a stream and the seed it is rendered with: a pipe or a wall in front
    (another may stand beside it), every background it is sampled on, day and night, both
    sizes, every position; a crack on half of them."""
    rng = np.random.default_rng([stream, seed, index])
    scene = random_scene(rng, max_objects=MAX_OBJECTS, kinds=CRACKABLE, crack_probability=CRACK_PROBABILITY)
    return scene, int(rng.integers(0, 2**31 - 1))


def frame_at(stream: int, seed: int, index: int, size: int, camera: bool) -> RenderedScene:
    """Scene ``index`` of a stream at ``size`` px: the clean render, or (``camera``) the SIMULATED
    camera's frame of it (:func:`~tierflow.model.scenes.camera.inspection_frame`: a crack made
    faint, the camera's blur, exposure and noise), drawn from the stream ``[stream, seed, index,
    2]``. The labels are the render's either way."""
    scene, render_seed = scene_at(stream, seed, index)
    if not camera:
        return render(scene, size, render_seed)
    return inspection_frame(scene, size, render_seed, np.random.default_rng([stream, seed, index, 2]))


def through_camera(variant: Variant, index: int) -> bool:
    """Whether training render ``index`` goes through the camera (all but every ``clean_every``-th)."""
    return variant.clean_every <= 0 or index % variant.clean_every != variant.clean_every - 1


def render_batch(
    stream: int, seed: int, start: int, count: int, size: int, camera: bool = False
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], npt.NDArray[np.bool_], list[Scene]]:
    """Scenes ``start .. start + count - 1`` of a stream at ``size`` px, clean or (``camera``) as
    the camera sees them: images [count, S, S, 3] uint8, crack masks [count, S, S], image labels
    [count] (cracked or not) and the scenes."""
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), np.bool_)
    scenes = []
    for k in range(count):
        rendered = frame_at(stream, seed, start + k, size, camera)
        images[k], masks[k] = rendered.image, rendered.crack_mask
        scenes.append(rendered.scene)
    labels = np.asarray([s.crack for s in scenes], np.bool_)
    return images, masks, labels, scenes


def crop_windows(
    rng: np.random.Generator, box: Box, size: int, crop: int, count: int
) -> list[tuple[int, int]]:
    """Top-left corners (row, column) of ``count`` crops: the first anywhere in the frame (sky,
    ground and background must stay quiet too), the others around the main object's box (where
    the cracks are)."""
    corners = [(int(rng.integers(0, size - crop + 1)), int(rng.integers(0, size - crop + 1)))]
    cx, cy = (box[0] + box[2]) / 2 * size, (box[1] + box[3]) / 2 * size
    for _ in range(count - 1):
        x = cx - crop / 2 + rng.uniform(-0.25, 0.25) * crop
        y = cy - crop / 2 + rng.uniform(-0.25, 0.25) * crop
        corners.append((int(np.clip(round(y), 0, size - crop)), int(np.clip(round(x), 0, size - crop))))
    return corners


def training_batch(
    variant: Variant, seed: int, step: int, batch: int, whole: bool = False
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Step ``step``'s images, crack masks and labels: ``batch`` crops of ``batch / crops`` renders
    for a variant trained on crops, or (``whole``, or a variant without crops) the renders
    themselves. Render ``i`` is scene ``step * renders + i`` either way, so the two phases never
    repeat a scene; it goes through the camera unless :func:`through_camera` says not. The label
    is whether crack pixels are in view: a crack hidden behind the other object, or outside the
    crop, is not there to be seen."""
    renders = -(-batch // variant.crops)
    if variant.sources:
        return _resized_frames(variant, seed, step * renders, renders)
    if whole or not variant.crop:
        images = np.empty((renders, variant.size, variant.size, 3), np.uint8)
        masks = np.empty((renders, variant.size, variant.size), np.bool_)
        for k in range(renders):
            index = step * renders + k
            rendered = frame_at(TRAIN_STREAM, seed, index, variant.size, through_camera(variant, index))
            images[k], masks[k] = rendered.image, rendered.crack_mask
        return images, masks, _in_view(masks)
    c = variant.crop
    out_images = np.empty((renders * variant.crops, c, c, 3), np.uint8)
    out_masks = np.empty((renders * variant.crops, c, c), np.bool_)
    for k in range(renders):
        index = step * renders + k
        rendered = frame_at(TRAIN_STREAM, seed, index, variant.size, through_camera(variant, index))
        rng = np.random.default_rng([TRAIN_STREAM, seed, index, 1])  # the crops' own stream
        for j, (y, x) in enumerate(crop_windows(rng, rendered.boxes[0], variant.size, c, variant.crops)):
            out_images[k * variant.crops + j] = rendered.image[y : y + c, x : x + c]
            out_masks[k * variant.crops + j] = rendered.crack_mask[y : y + c, x : x + c]
    images, masks = out_images[:batch], out_masks[:batch]
    return images, masks, _in_view(masks)


def _resized_frames(
    variant: Variant, seed: int, start: int, count: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Whole frames brought to the variant's side as the runtime does
    (:func:`~tierflow.runtime.crack_detector.resize`): camera frames are taken at
    :data:`~tierflow.model.scenes.camera.CAMERA_SIDE` (what the camera sends), clean ones are
    rendered at the sides of ``variant.sources`` in turn (a frame box-filtered from a larger render
    is not a native render: finer texture, softer crack edges, and a detector trained on native
    renders alone calls cracks on it). The mask of a larger render is max-pooled: a pixel is crack
    where any of its sub-pixels is (as a native mask marks it)."""
    size = variant.size
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), np.bool_)
    for k in range(count):
        index = start + k
        camera = through_camera(variant, index)
        clean_side = variant.sources[(index // max(variant.clean_every, 1)) % len(variant.sources)]
        source = CAMERA_SIDE if camera else clean_side
        rendered = frame_at(TRAIN_STREAM, seed, index, source, camera)
        factor = source // size
        images[k] = resize(rendered.image, size)
        masks[k] = rendered.crack_mask.reshape(size, factor, size, factor).any(axis=(1, 3))
    return images, masks, _in_view(masks)


def _in_view(masks: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Per image of a [N, H, W] mask stack: is any crack pixel in it."""
    return np.asarray(masks.reshape(len(masks), -1).any(axis=1), np.bool_)


# --- the model ---------------------------------------------------------------------------------


def build_model(variant: Variant) -> torch.nn.Module:
    """The U-Net of the module's docstring for ``variant``; forward gives (pixel logits [N, 1, S, S],
    image logit [N])."""
    import torch
    from torch import nn

    def conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        pad = dilation
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )

    class Residual(nn.Module):
        def __init__(self, width: int, dilation: int) -> None:
            super().__init__()
            self.body = conv(width, width, dilation=dilation)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)  # type: ignore[no-any-return]

    class CrackNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w, deepest = variant.widths, len(variant.widths) - 1
            self.down = nn.ModuleList()
            for k, width in enumerate(w):
                entry = conv(3, width) if k == 0 else conv(w[k - 1], width, stride=2)
                dil = [2**j if k == deepest else 1 for j in range(variant.blocks[k])]
                self.down.append(nn.Sequential(entry, *(Residual(width, d) for d in dil)))
            # up: 1x1 to the finer width (cheaper before the upsampling), add the skip, a 3x3 conv
            self.lateral = nn.ModuleList(nn.Conv2d(w[k + 1], w[k], 1) for k in range(deepest))
            self.fuse = nn.ModuleList(conv(w[k], w[k]) for k in range(deepest))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.pixel = nn.Conv2d(w[0], 1, 1)
            # start near the prior (a pixel is a crack ~1 % of the time), not at 0.5 everywhere:
            # the first steps then learn where cracks are instead of that most pixels are not
            assert self.pixel.bias is not None
            nn.init.constant_(self.pixel.bias, -4.0)
            # the image logit is a scaled mean of the top pixel logits: an image has a crack when
            # some pixels are confidently crack. A head on pooled deep features was worse on the
            # cloud (trained on crops, it overruled maps that had found the crack on whole frames);
            # top-k, not the max, so that one stray pixel is not enough
            self.image = nn.Linear(1, 1)
            nn.init.constant_(self.image.weight, 1.0)
            nn.init.constant_(self.image.bias, 4.0)  # the pixel logits start at -4: a score of 0.5

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            skips = []
            for stage in self.down:
                x = stage(x)
                skips.append(x)
            for k in reversed(range(len(self.lateral))):
                x = self.fuse[k](self.up(self.lateral[k](x)) + skips[k])
            logits = self.pixel(x)
            top = logits.flatten(1).topk(variant.topk, dim=1).values.mean(dim=1, keepdim=True)
            return logits, self.image(top)[:, 0]

    torch.manual_seed(0)
    return CrackNet()


class _Exported:
    """The export wrapper: sigmoid on both outputs (the file gives probabilities) and, for a
    variant with ``flip``, the mean of the image's and its mirror image's answers (the scenes
    are drawn facing either way, so the mirror is as valid an input; two looks halve the noise
    for twice the time, which the cloud can spend)."""

    @staticmethod
    def wrap(model: torch.nn.Module, flip: bool) -> torch.nn.Module:
        import torch
        from torch import nn

        class WithSigmoid(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = model

            def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                if not flip:
                    logits, score = self.net(image)
                    return torch.sigmoid(logits), torch.sigmoid(score)
                n = image.shape[0]
                logits, score = self.net(torch.cat([image, torch.flip(image, dims=[3])]))
                prob, p_score = torch.sigmoid(logits), torch.sigmoid(score)
                return (prob[:n] + torch.flip(prob[n:], dims=[3])) / 2, (p_score[:n] + p_score[n:]) / 2

        return WithSigmoid()


def losses_of(
    logits: torch.Tensor, score: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The three terms: weighted pixel BCE, soft dice over the batch, image BCE."""
    import torch
    import torch.nn.functional as F

    pixel = F.binary_cross_entropy_with_logits(logits, masks, pos_weight=torch.tensor(POS_WEIGHT))
    prob = torch.sigmoid(logits)
    # over the whole batch: an uncracked image has no dice of its own, but its false pixels count
    dice = 1 - (2 * (prob * masks).sum() + 1) / (prob.sum() + masks.sum() + 1)
    image = F.binary_cross_entropy_with_logits(score, labels)
    return {"pixel": 10 * pixel, "dice": dice, "image": image}


def train(
    variant: Variant,
    steps: int,
    seed: int = 0,
    threads: int = 1,
    log_every: int = 100,
    batch: int | None = None,
    lr: float | None = None,
) -> tuple[torch.nn.Module, dict[str, Any], list[dict[str, float]]]:
    """Train on freshly rendered batches; the model (eval mode), a summary of the run, the log."""
    import torch

    batch = batch or variant.batch
    lr = lr or variant.lr
    if steps < 1 or batch < 1:
        raise InvalidInputError(f"steps and batch must be >= 1, got {steps} and {batch}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_model(variant)
    # channels-last convolutions run 1.5-2x faster on one CPU core (same results up to rounding)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    warmup = min(100, max(steps // 10, 1))
    started = time.perf_counter()
    render_s = 0.0
    log: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        t0 = time.perf_counter()
        whole = step >= round(variant.whole_from * steps)
        images, masks, labels = training_batch(variant, seed, step, batch, whole)
        render_s += time.perf_counter() - t0
        x = torch.from_numpy(unit_nchw(images)).contiguous(memory_format=torch.channels_last)
        logits, score = model(x)
        y = torch.from_numpy(masks[:, None].astype(np.float32))
        terms = losses_of(logits, score, y, torch.from_numpy(labels.astype(np.float32)))
        # on crops the image label is unreliable (a crack cut by the crop's border leaves a few
        # pixels): the map learns from crops, the image score from whole frames only
        counted = [v for k, v in terms.items() if whole or not variant.crop or k != "image"]
        loss = sum(counted, torch.zeros(()))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        _accumulate(window, terms, logits, score, y, labels)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            entry = _log_entry(
                window, step + 1, opt.param_groups[0]["lr"], time.perf_counter() - started, render_s
            )
            log.append(entry)
            print(_format_log(entry, steps), flush=True)
            window = {}
    model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    run = {
        "variant": variant.name,
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "threads": threads,
        "scenes": steps * -(-batch // variant.crops),  # renders (a crop variant takes several crops of each)
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "parameters": parameter_count(model),
    }
    return model, run, log


def _accumulate(
    window: dict[str, list[float]],
    terms: Mapping[str, torch.Tensor],
    logits: torch.Tensor,
    score: torch.Tensor,
    masks: torch.Tensor,
    labels: npt.NDArray[np.bool_],
) -> None:
    """Training figures of one batch, for the log: the loss terms, image accuracy, pixel IoU."""
    with_grad_off = {k: float(v.detach()) for k, v in terms.items()}
    pred = (logits.detach() > 0).numpy()
    truth = masks.numpy() > 0.5
    union = np.logical_or(pred, truth).sum()
    figures = with_grad_off | {
        "accuracy": float(((score.detach().numpy() > 0) == labels).mean()),
        "pixel_iou": float(np.logical_and(pred, truth).sum() / union) if union else 1.0,
    }
    for name, value in figures.items():
        window.setdefault(name, []).append(value)


def _log_entry(
    window: Mapping[str, list[float]], step: int, lr: float, elapsed: float, render_s: float
) -> dict[str, float]:
    entry = {"step": float(step), "lr": float(lr), "minutes": round(elapsed / 60, 3)}
    entry |= {name: round(float(np.mean(values)), 4) for name, values in window.items()}
    entry["render_share"] = round(render_s / elapsed, 3)
    return entry


def _format_log(entry: Mapping[str, float], steps: int) -> str:
    shown = ("pixel", "dice", "image", "accuracy", "pixel_iou")
    figures = " ".join(f"{name} {entry[name]:.4f}" for name in shown)
    return (
        f"step {int(entry['step'])}/{steps} lr {entry['lr']:.2e} {figures} "
        f"[{entry['minutes']:.1f} min, render {entry['render_share']:.0%}]"
    )


# --- export ------------------------------------------------------------------------------------


def export_onnx(
    model: torch.nn.Module, variant: Variant, path: Path, training: Mapping[str, Any], opset: int = 17
) -> None:
    """Write ``model`` to ``path`` (batch axis dynamic, sigmoid applied) with its metadata."""
    import onnx
    import torch

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, variant.size, variant.size)
    axes = {INPUT: {0: "batch"}, PROB: {0: "batch"}, SCORE: {0: "batch"}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is wanted: cleaner graph
        torch.onnx.export(
            _Exported.wrap(model, variant.flip).eval(),  # eval: the exporter restores the wrapper's mode
            (dummy,),
            str(tmp),
            input_names=[INPUT],
            output_names=[PROB, SCORE],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    md.write_metadata(
        proto,
        kind=ModelKind.VISION,
        input_size=variant.size,
        config=config_of(variant),
        training=dict(training),
    )
    proto.doc_string = (
        f"tierflow crack detector ({variant.name}): per-pixel crack probability and an image score"
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def config_of(variant: Variant) -> dict[str, Any]:
    """``tierflow.config`` of a detector: what it is, what it reads and writes, its architecture."""
    s = variant.size
    return {
        "kind": DETECTOR_KIND,
        "variant": variant.name,
        "input": f"{INPUT}: float32 [N, 3, {s}, {s}], RGB in [0, 1]",
        "outputs": {PROB: f"float32 [N, 1, {s}, {s}], per-pixel crack probability", SCORE: "float32 [N]"},
        "threshold": 0.5,
        "widths": list(variant.widths),
        "blocks": list(variant.blocks),
        "topk": variant.topk,
        "flip": variant.flip,
    }


def set_training(path: Path, training: Mapping[str, Any]) -> None:
    """Replace ``tierflow.training`` of a written model (the weights stay as they are)."""
    import onnx

    proto = onnx.load(str(path))
    md.write_metadata(proto, training=dict(training))
    onnx.save(proto, str(path))


# --- evaluation (ONNX Runtime only) ------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One held-out image: the truth and what the detector said."""

    truth: bool
    cracked: bool
    score: float
    confidence: float
    iou: float | None  # cracked images with crack pixels in view only
    box_hit: bool | None  # as ``iou``
    night: bool


def boxes_overlap(a: Box, b: Box) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def record_of(found: Detection, truth_mask: npt.NDArray[np.bool_], truth: bool, night: bool) -> Record:
    """Compare one detection with the render's labels (masks at the model's input size)."""
    iou: float | None = None
    hit: bool | None = None
    true_box = box_of(truth_mask)
    if truth and true_box is not None:  # a crack hidden behind another object has nothing to localise
        union = np.logical_or(found.mask, truth_mask).sum()
        iou = float(np.logical_and(found.mask, truth_mask).sum() / union)
        hit = found.box is not None and boxes_overlap(found.box, true_box)
    return Record(truth, found.cracked, found.score, found.confidence, iou, hit, night)


def detect_heldout(
    detectors: Sequence[CrackDetector], n: int, seed: int, size: int, camera: bool = True, batch: int = 50
) -> list[list[Record]]:
    """Take ``n`` held-out frames once, at ``size`` px (the camera's frames, or clean renders when
    not ``camera``), and run every detector on them (each resizes to its own side and is scored on
    the crack mask rendered at that side)."""
    out: list[list[Record]] = [[] for _ in detectors]
    for start in range(0, n, batch):
        count = min(batch, n - start)
        images, masks, labels, scenes = render_batch(HELDOUT_STREAM, seed, start, count, size, camera)
        nights = [str(scene.lighting) == "night" for scene in scenes]
        for records, detector in zip(out, detectors, strict=True):
            truth_masks = masks if size == detector.size else _masks_at(scenes, seed, start, detector.size)
            for k, found in enumerate(detector.detect_batch(list(images))):
                records.append(record_of(found, truth_masks[k], bool(labels[k]), nights[k]))
    return out


def _masks_at(scenes: Sequence[Scene], seed: int, start: int, size: int) -> npt.NDArray[np.bool_]:
    """The crack masks of held-out scenes rendered again at another size (same geometry)."""
    seeds = [scene_at(HELDOUT_STREAM, seed, start + k)[1] for k in range(len(scenes))]
    return np.stack([render(s, size, r).crack_mask for s, r in zip(scenes, seeds, strict=True)])


def auroc(positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float | None:
    """Area under the ROC curve of ``score`` for ``positive`` (ties count half); None without
    both classes."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    ranks[order] = np.arange(1, len(score) + 1)
    for value in np.unique(score):  # average ranks over ties
        tied = score == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def summarise(records: Sequence[Record]) -> dict[str, float | None]:
    """Image-level precision, recall, accuracy; pixel IoU and box hit rate on the cracked images
    with crack pixels in view; how well confidence predicts the errors (AUROC of low confidence vs
    being wrong, error rate in the least confident 10 % vs the rest)."""
    truth = np.asarray([r.truth for r in records])
    said = np.asarray([r.cracked for r in records])
    wrong = truth != said
    conf = np.asarray([r.confidence for r in records], np.float64)
    night = np.asarray([r.night for r in records])
    tp = int((truth & said).sum())
    located = [r for r in records if r.iou is not None]
    low = np.argsort(conf, kind="mergesort")[: max(1, round(0.1 * len(records)))]
    is_low = np.zeros(len(records), np.bool_)
    is_low[low] = True
    return {
        "n": float(len(records)),
        "n_cracked": float(truth.sum()),
        "precision": tp / int(said.sum()) if said.any() else None,
        "recall": tp / int(truth.sum()) if truth.any() else None,
        "accuracy": float((~wrong).mean()),
        "accuracy_day": float((~wrong[~night]).mean()) if (~night).any() else None,
        "accuracy_night": float((~wrong[night]).mean()) if night.any() else None,
        "iou": float(np.mean([r.iou for r in located])) if located else None,
        "box_hit_rate": float(np.mean([bool(r.box_hit) for r in located])) if located else None,
        "n_located": float(len(located)),
        "confidence_auroc": auroc(wrong, -conf),
        "error_low_confidence_10pct": float(wrong[is_low].mean()),
        "error_rest": float(wrong[~is_low].mean()) if (~is_low).any() else None,
    }


def latency_ms(detector: CrackDetector, frames: int = 30) -> float:
    """Median time of one frame at the model's input size (one image per call), in ms."""
    images, _, _, _ = render_batch(HELDOUT_STREAM, 10_000, 0, 4, detector.size)
    detector.detect(images[0])  # warm-up: the first run allocates
    times = [detector.detect(images[k % len(images)]).elapsed_s for k in range(frames)]
    return float(np.median(times) * 1e3)


def evaluate(path: str | Path, n: int = 1000, seed: int = 0, camera: bool = True) -> dict[str, float | None]:
    """The detector's figures on ``n`` held-out frames (stream ``[1, seed, i]``, never trained on):
    the SIMULATED camera's frames at :data:`CAMERA_SIDE`, resized to the detector's side as the
    runtime does, or (not ``camera``) clean renders at its own side; and its per-frame latency on
    one thread."""
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, not {n}")
    detector = CrackDetector.open(path, threads=1)
    (records,) = detect_heldout([detector], n, seed, CAMERA_SIDE if camera else detector.size, camera)
    return summarise(records) | {"latency_ms": latency_ms(detector)}


def escalation(
    edge_path: str | Path,
    cloud_path: str | Path,
    n: int = 1000,
    seed: int = 0,
    share: float = 0.1,
    escalate_below: float = ESCALATE_BELOW,
    camera: bool = True,
) -> dict[str, float | None]:
    """Edge-first inspection on ``n`` held-out camera frames at :data:`CAMERA_SIDE` (each detector
    resizes them; stream as :func:`evaluate`): the edge answers every frame and a frame it sent up
    gets the cloud's answer. Two ways to choose what goes up: the least confident ``share`` of the
    frames (``*_share`` figures), and the frames below ``escalate_below`` as the inspection
    endpoint does (``*_threshold``). Also precision, recall, accuracy and errors of each variant
    alone, the frames one gets wrong and the other right (with the two-sided exact sign test of
    them: is the cloud's edge real, or noise), and how well the edge's confidence ranks its errors."""
    if n < 1 or not 0.0 <= share <= 1.0 or not 0.5 <= escalate_below <= 1.0:
        raise InvalidInputError(
            f"need n >= 1, 0 <= share <= 1 and 0.5 <= escalate_below <= 1, got {n}, {share}, {escalate_below}"
        )
    edge, cloud = CrackDetector.open(edge_path), CrackDetector.open(cloud_path)
    at_edge, at_cloud = detect_heldout([edge, cloud], n, seed, CAMERA_SIDE, camera)
    truth = np.asarray([r.truth for r in at_edge])
    edge_said = np.asarray([r.cracked for r in at_edge])
    cloud_said = np.asarray([r.cracked for r in at_cloud])
    confidence = np.asarray([r.confidence for r in at_edge], np.float64)
    edge_wrong, cloud_wrong = edge_said != truth, cloud_said != truth
    by_share = np.zeros(n, np.bool_)
    by_share[np.argsort(confidence, kind="mergesort")[: round(share * n)]] = True
    by_threshold = confidence < escalate_below
    report: dict[str, float | None] = {"n": float(n), "n_cracked": float(truth.sum())}
    for name, said in (("edge", edge_said), ("cloud", cloud_said)):
        report |= _scores(name, said, truth)
    only_edge, only_cloud = int((edge_wrong & ~cloud_wrong).sum()), int((cloud_wrong & ~edge_wrong).sum())
    report |= {
        "wrong_edge_only": float(only_edge),
        "wrong_cloud_only": float(only_cloud),
        "sign_test_p": sign_test(only_edge, only_cloud),
        "edge_confidence_auroc": auroc(edge_wrong, -confidence),
    }
    for name, sent in (("share", by_share), ("threshold", by_threshold)):
        combined = np.where(sent, cloud_said, edge_said)
        report |= {
            f"sent_{name}": float(sent.mean()),
            f"closed_at_edge_{name}": 1.0 - float(sent.mean()),
            f"accuracy_escalated_{name}": float((combined == truth).mean()),
            f"errors_escalated_{name}": float((combined != truth).sum()),
            f"edge_errors_sent_{name}": float((edge_wrong & sent).sum()),
        }
    report |= {  # the names earlier reports used (least confident ``share``)
        "share": share,
        "escalate_below": escalate_below,
        "accuracy_escalated": report["accuracy_escalated_share"],
        "closed_at_edge": report["closed_at_edge_share"],
        "edge_errors_sent": report["edge_errors_sent_share"],
    }
    return report


def _scores(name: str, said: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> dict[str, float | None]:
    tp = int((said & truth).sum())
    return {
        f"precision_{name}": tp / int(said.sum()) if said.any() else None,
        f"recall_{name}": tp / int(truth.sum()) if truth.any() else None,
        f"accuracy_{name}": float((said == truth).mean()),
        f"{name}_errors": float((said != truth).sum()),
    }


def sign_test(a: int, b: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) of ``a`` against ``b`` discordant frames:
    the chance of a split at least this uneven if either variant were as likely to be the one right."""
    total = a + b
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, k) for k in range(min(a, b) + 1)) / 2**total
    return float(min(1.0, 2 * tail))


# --- the command -------------------------------------------------------------------------------


def _rounded(report: Mapping[str, float | None]) -> dict[str, float | None]:
    """Four decimals; three significant digits below 0.001 (a sign test's p is not 0)."""
    return {
        k: None if v is None else float(f"{v:.3g}") if 0 < abs(v) < 1e-3 else round(v, 4)
        for k, v in report.items()
    }


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")


def _figures(path: Path, n: int, seed: int, edge: Path | None) -> dict[str, dict[str, float | None]]:
    """The held-out figures of a written model: on the camera stream (``heldout``), on clean
    renders (``heldout_clean``) and, given an ``edge`` model, escalation from it (``escalation``);
    each printed as it is measured."""
    figures: dict[str, dict[str, float | None]] = {}
    measures: dict[str, Callable[[], Mapping[str, float | None]]] = {
        "heldout": lambda: evaluate(path, n, seed),
        "heldout_clean": lambda: evaluate(path, n, seed, camera=False),
    }
    if edge:
        measures["escalation"] = lambda: escalation(edge, path, n, seed)
    for name, measure in measures.items():
        figures[name] = _rounded(measure())
        print(f"{name}: {json.dumps(figures[name])}", flush=True)
    return figures


def _rescore(path: Path, n: int, seed: int, edge: Path | None) -> None:
    """Replace the held-out figures (and escalation from ``edge``) of a trained model and its
    .json, keeping its run and log: e.g. after the edge model it escalates from was retrained."""
    document = json.loads(path.with_suffix(".json").read_text())
    run = document["training"]
    variant = VARIANTS[run["variant"]]
    document["config"], document["variant"] = config_of(variant), asdict(variant)
    for name in ("heldout", "heldout_clean", "escalation"):
        run.pop(name, None)
    run |= _figures(path, n, seed, edge)
    set_training(path, run)
    _write_json(path, document)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="edge")
    ap.add_argument(
        "--out", type=Path, required=True, help="where to write the ONNX model (and .json beside it)"
    )
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (one fresh batch each)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval", type=int, default=1000, metavar="N", help="held-out scenes to score (0: skip)")
    ap.add_argument("--edge", type=Path, help="an edge detector: also measure escalation from it to --out")
    ap.add_argument("--evaluate-only", action="store_true", help="score an existing --out file, no training")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score an existing --out file again and store the figures in it and its .json (no training)",
    )
    args = ap.parse_args(argv)
    if args.rescore:
        _rescore(args.out, args.eval or 1000, args.seed, args.edge)
        return
    if args.evaluate_only:
        _figures(args.out, args.eval or 1000, args.seed, args.edge)
        return
    variant = VARIANTS[args.variant]
    model, run, log = train(
        variant, args.steps or variant.steps, args.seed, args.threads, args.log_every, args.batch, args.lr
    )
    print(
        f"model: {run['parameters']:,} parameters; {run['scenes']:,} scenes in {run['minutes']} min",
        flush=True,
    )
    export_onnx(model, variant, args.out, run)
    if args.eval:
        run |= _figures(args.out, args.eval, args.seed, args.edge)
        set_training(args.out, run)
    _write_json(
        args.out, {"training": run, "config": config_of(variant), "variant": asdict(variant), "log": log}
    )
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
