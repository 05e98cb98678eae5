"""Train the text-to-image model's resolution stages on the renderer's own high-resolution output.

    python -m tierflow.compiler.train_upsamplers --out DIR [--stage up256 up2x refiner] [--minutes M ...]

writes ``DIR/<stage>.onnx`` and ``DIR/<stage>.json`` (the run) for each stage:

``up256`` (phone and up: the light upsampler, part of the base)
    64 px -> 256 px (x 4). Input ``image`` [N, 3, h, w] in [-1, 1], output ``upsampled``
    [N, 3, 4h, 4w].
``up2x`` (edge and up: the edge layers)
    x 2, applied again and again: 256 -> 512 -> 1024 (edge), -> 2048 (cloud). Same signature.
``refiner`` (cloud only: the cloud layers)
    64 px -> 256 px (x 4) like ``up256`` but with about twice the base model's parameters, a
    three-level UNet (64, 32 and 16 px) whose residual blocks are modulated by the prompt's
    ``pooled`` text vector (an extra input, float32 [N, 128], from the base model's text encoder):
    it knows what it is sharpening.

**Method.** Every stage is a residual upsampler: the input upsampled bilinearly, plus what the
network adds, learned with an L1 loss against the true high-resolution render. Training pairs
are rendered fresh: a scene drawn at the high resolution and box-filtered down (the renderer
draws the same geometry at every size, so that is the low-resolution render). The low-resolution
side is degraded a little (Gaussian noise up to 0.05, a blur for half of them) because at run
time it comes from the base generator, not from the renderer. ``up2x`` sees crops of renders at
256, 512 and 1024 px so that it works at every level of the pyramid.

Compute grows with the output's area: every layer is a convolution at the input's resolution or
a fixed fraction of it.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from tierflow.compiler.train_text_to_image import bf16_available, lr_at, scene_at, to_model_space
from tierflow.errors import InvalidInputError
from tierflow.model import metadata as md
from tierflow.model.scenes import downsample, render
from tierflow.runtime.flow_sampler import DEFAULT_MODEL_DIR
from tierflow.runtime.upsampler import IMAGE_IN, POOLED_IN, UPSAMPLED
from tierflow.types.models import ModelKind

STREAM = 7  # scenes of stream 0 train the base model; these are other scenes
TEXT_DIM = 128


@dataclass(frozen=True)
class StageSpec:
    """One resolution stage: its factor, its UNet levels (channels, residual blocks) at strides
    1, 2, 4..., whether the prompt modulates it, the crop it trains on, the render sizes."""

    factor: int
    levels: tuple[tuple[int, int], ...]
    text: bool
    crop: int  # high-resolution crop side in training
    renders: tuple[int, ...]  # high-resolution render sides to crop from
    batch: int
    minutes: float
    lr: float = 1e-3


STAGES: dict[str, StageSpec] = {
    "up256": StageSpec(4, ((32, 2), (64, 2)), False, 256, (256,), 16, 8.0),
    "up2x": StageSpec(2, ((24, 1), (48, 1), (96, 1)), False, 128, (256, 512, 1024), 16, 8.0),
    "refiner": StageSpec(4, ((64, 3), (128, 3), (256, 4)), True, 256, (256,), 8, 16.0, lr=3e-4),
}


class ResConv(nn.Module):
    """conv -> (FiLM from the text) -> SiLU -> conv, + input."""

    def __init__(self, c: int, text_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.film = nn.Linear(text_dim, 2 * c) if text_dim else None
        nn.init.zeros_(self.conv2.weight)
        if self.conv2.bias is not None:
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(x)
        if self.film is not None and pooled is not None:
            scale, shift = self.film(pooled)[:, :, None, None].chunk(2, dim=1)
            h = h * (1.0 + scale) + shift
        return x + self.conv2(F.silu(h))  # type: ignore[no-any-return]


class Upsampler(nn.Module):
    """image [N, 3, h, w] (+ pooled [N, 128]) -> [N, 3, f h, f w]: bilinear + a learned residual."""

    def __init__(self, spec: StageSpec) -> None:
        super().__init__()
        self.factor = spec.factor
        text_dim = TEXT_DIM if spec.text else 0
        widths = [w for w, _ in spec.levels]
        self.head = nn.Conv2d(3, widths[0], 3, padding=1)
        self.downs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:], strict=False)
        )
        self.levels = nn.ModuleList(
            nn.ModuleList([ResConv(w, text_dim) for _ in range(n)]) for w, n in spec.levels
        )
        self.ups = nn.ModuleList(nn.Conv2d(b, 4 * a, 1) for a, b in zip(widths, widths[1:], strict=False))
        self.tail = nn.Conv2d(widths[0], 3 * spec.factor**2, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        if self.tail.bias is not None:
            nn.init.zeros_(self.tail.bias)

    def forward(self, image: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.head(image))
        skips = []
        for i, blocks in enumerate(self.levels):
            if i:
                h = F.silu(self.downs[i - 1](h))
            for block in blocks:  # type: ignore[attr-defined]  # a ModuleList of ResConv
                h = block(h, pooled)
            skips.append(h)
        u = skips[-1]
        for i in reversed(range(len(self.ups))):
            u = skips[i] + F.pixel_shuffle(self.ups[i](u), 2)
        base = F.interpolate(image, scale_factor=float(self.factor), mode="bilinear", align_corners=False)
        return base + F.pixel_shuffle(self.tail(F.silu(u)), self.factor)


def parameters(model: nn.Module) -> int:
    return sum(int(p.numel()) for p in model.parameters())


# --- data --------------------------------------------------------------------------------------


class PairPool:
    """High-resolution crops of fresh renders (uint8) and their prompts' pooled text vectors."""

    def __init__(self, spec: StageSpec, seed: int, size: int, text: Any | None) -> None:
        self.spec, self.seed, self.size = spec, seed, size
        self.rng = np.random.default_rng([STREAM, seed, 2**31])
        self.text = text
        self.crops = np.empty((size, spec.crop, spec.crop, 3), np.uint8)
        self.pooled = np.zeros((size, TEXT_DIM), np.float32)
        self.rendered = 0
        self.render_s = 0.0
        for _ in range(size):
            self.add()

    def add(self) -> None:
        t0 = time.perf_counter()
        scene, render_seed, prompt = scene_at(STREAM, self.seed, self.rendered)
        side = int(self.spec.renders[self.rendered % len(self.spec.renders)])
        image = render(scene, side, render_seed).image
        c = self.spec.crop
        y, x = (int(v) for v in self.rng.integers(0, side - c + 1, size=2))
        slot = self.rendered % self.size
        self.crops[slot] = image[y : y + c, x : x + c]
        if self.text is not None:
            self.pooled[slot] = self.text([prompt])[0]
        self.rendered += 1
        self.render_s += time.perf_counter() - t0

    def draw(self, batch: int, fresh: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        for _ in range(fresh):
            self.add()
        idx = self.rng.choice(self.size, size=batch, replace=False)
        return self.crops[idx], self.pooled[idx]


def degrade(low: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """What the base generator's output looks like next to a clean render: a little noise and blur."""
    n = low.shape[0]
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * 0.05
    blurred = F.avg_pool2d(F.pad(low, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float() * torch.rand(n, 1, 1, 1, generator=gen)
    low = (1.0 - mix) * low + mix * blurred
    return low + sigma * torch.randn(low.shape, generator=gen)


def low_of(high: npt.NDArray[np.uint8], factor: int) -> npt.NDArray[np.uint8]:
    """Box-filter a batch [N, H, W, 3] by ``factor`` (what the renderer draws at the lower size)."""
    return np.stack([np.rint(downsample(h, factor)).astype(np.uint8) for h in high])


def pooled_text(model_dir: Path) -> Any:
    """prompts -> pooled text vectors [N, 128] from the base model's ONNX text encoder."""
    from tierflow.runtime.flow_sampler import FlowSampler

    sampler = FlowSampler.open(model_dir, threads=1)
    return lambda prompts: sampler.encode(prompts)["pooled"]


# --- training and export -------------------------------------------------------------------------


def train_stage(
    name: str, minutes: float, seed: int, threads: int, base_dir: Path, log_every: int = 50
) -> tuple[Upsampler, dict[str, Any]]:
    spec = STAGES[name]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    bf16 = bf16_available()
    model = Upsampler(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    pool = PairPool(spec, seed, 256, pooled_text(base_dir) if spec.text else None)
    budget, step, window, curve = minutes * 60.0, 0, [], []
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= budget and step > 50:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, elapsed / budget, spec.lr, 100)
        high_u8, pooled = pool.draw(spec.batch, max(1, spec.batch // 4))
        high = to_model_space(high_u8)
        low = degrade(to_model_space(low_of(high_u8, spec.factor)), gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(low, torch.from_numpy(pooled) if spec.text else None)
        loss = F.l1_loss(pred.float(), high)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(float(loss.detach()))
        step += 1
        if step % log_every == 0:
            mean = float(np.mean(window))
            window = []
            curve.append({"step": step, "l1": round(mean, 5), "minutes": round(elapsed / 60, 2)})
            print(f"{name} step {step} l1 {mean:.4f} [{elapsed / 60:.1f} min]", flush=True)
    model.eval()
    run = {
        "stage": name,
        "factor": spec.factor,
        "levels": [list(level) for level in spec.levels],
        "text_conditioned": spec.text,
        "seed": seed,
        "lr": spec.lr,
        "steps": step,
        "batch": spec.batch,
        "crop": spec.crop,
        "renders": list(spec.renders),
        "scenes_rendered": pool.rendered,
        "wall_s": round(time.perf_counter() - started, 1),
        "parameters": parameters(model),
        "bf16_autocast": bf16,
        "loss_curve": curve,
    }
    return model, run


def export_stage(model: Upsampler, name: str, out: Path, run: dict[str, Any]) -> float:
    """Write ``out/<name>.onnx``; returns the largest |ONNX Runtime - torch| on a check input."""
    import onnx
    import onnxruntime as ort

    spec = STAGES[name]
    model = model.float().eval()
    path = out / f"{name}.onnx"
    tmp = path.with_suffix(".onnx.tmp")
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pooled = torch.randn(1, TEXT_DIM, generator=torch.Generator().manual_seed(2))
    inputs = [IMAGE_IN, POOLED_IN] if spec.text else [IMAGE_IN]
    args = (image, pooled) if spec.text else (image,)
    axes: dict[str, dict[int, str]] = {IMAGE_IN: {0: "batch", 2: "height", 3: "width"},
                                       UPSAMPLED: {0: "batch", 2: "out_height", 3: "out_width"}}
    if spec.text:
        axes[POOLED_IN] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(tmp), input_names=inputs, output_names=[UPSAMPLED],
                          dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=True)
        want = model(*args).numpy()
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    summary = {k: v for k, v in run.items() if k != "loss_curve"}
    md.write_metadata(proto, kind=ModelKind.GENERIC, config={"component": name, "factor": spec.factor},
                      training=summary)
    proto.doc_string = f"tierflow text-to-image stage {name} (x{spec.factor})"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {IMAGE_IN: image.numpy()} | ({POOLED_IN: pooled.numpy()} if spec.text else {})
    got = sess.run([UPSAMPLED], feeds)[0]
    return float(np.abs(np.asarray(got) - want).max())


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="folder of the text-to-image model")
    ap.add_argument("--stage", nargs="+", choices=sorted(STAGES), default=list(STAGES))
    ap.add_argument("--minutes", type=float, nargs="+", help="minutes per stage (default: each its own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    minutes = args.minutes or [STAGES[s].minutes for s in args.stage]
    if len(minutes) not in (1, len(args.stage)):
        raise InvalidInputError("give one --minutes for all stages or one per stage")
    for i, name in enumerate(args.stage):
        model, run = train_stage(name, minutes[min(i, len(minutes) - 1)], args.seed, args.threads, args.out)
        run["onnx_max_abs_error"] = export_stage(model, name, args.out, run)
        (args.out / f"{name}.json").write_text(json.dumps(run, indent=1) + "\n")
        minutes_run = run["wall_s"] / 60
        print(f"{name}: {run['parameters']:,} parameters, {run['steps']} steps in {minutes_run:.1f} min, "
              f"|ORT - torch| {run['onnx_max_abs_error']:.1e}", flush=True)


if __name__ == "__main__":
    main()
