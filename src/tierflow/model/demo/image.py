"""``random-image``: a text/noise-conditioned image generator with an optional refiner stage.

The weights are random (seeded), but the structure and the cost are those of a
real latent-space generator, so the capability pyramid (phone 256 px, edge
512/1024 px, cloud 1024/2048 px with the refiner) and split execution have
something real to work on::

    noise [1, 4, h, w]   cond [1, 64]
      |                    |
    stem/ conv3x3        mapping/ Gemm-LeakyReLU x2 -> style [1, 256]
      |                    |
    gen_block{0..3}/  InstanceNorm -> FiLM(style) -> conv -> conv, + residual   (latent h x w)
      |
    up{1..3}/  Resize x2 -> conv3x3 -> InstanceNorm -> LeakyReLU          (2h, 4h, 8h)
      |
    to_rgb/  conv3x3 -> tanh  ==> image [1, 3, 8h, 8w] in [-1, 1]
      |
    refiner/  conv in -> residual conv blocks -> conv out, + image, clip  ==> refined_image

Running without the refiner means asking ONNX Runtime for ``image`` only; it
then skips the refiner nodes. Every conv works at a resolution proportional to
the output, so compute grows with H*W (the generator blocks at 1/64 of the
pixels but 64 channels, the decoder and refiner at full size but few channels).

Metadata (``metadata_props``): ``tierflow.kind`` = ``image-generator``,
``tierflow.latent_factor``, ``tierflow.cond_dim``, ``tierflow.resolutions``,
``tierflow.blocks`` (JSON list of the main-path tensors between blocks, in
order: where a split can cut; the small ``mapping/style`` vector feeds every
generator block and crosses any cut before ``up1/out``), ``tierflow.refiner_output``,
``tierflow.dims`` (JSON defaults of the symbolic dims, for the generic runner).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx

from tierflow.model import metadata as md
from tierflow.model.onnx_build import GraphBuilder
from tierflow.types.models import ModelKind

SEED = 20261125
NOISE = "noise"
COND = "cond"
IMAGE = "image"
REFINED_IMAGE = "refined_image"

LATENT_FACTOR = 8
LATENT_CHANNELS = 4
COND_DIM = 64
STYLE_DIM = 256
GEN_CHANNELS = 64
GEN_BLOCKS = 4
DECODER_CHANNELS = (32, 16, 8)  # after up1, up2, up3
REFINER_CHANNELS = 8
REFINER_BLOCKS = 2
RESOLUTIONS = (256, 512, 1024, 2048)


def _gen_block(b: GraphBuilder, k: int, x: str, style: str) -> str:
    """Residual block at latent resolution, modulated by the style vector (FiLM)."""
    p = f"gen_block{k}"
    c = GEN_CHANNELS
    h = b.instance_norm(f"{p}/norm", x, c)
    # scale starts around 1 (bias 1) so an unconditioned block is a plain residual block
    scale = b.unsqueeze_hw(f"{p}/film_scale_hw", b.gemm(f"{p}/film_scale", style, STYLE_DIM, c, 0.5, 1.0))
    shift = b.unsqueeze_hw(f"{p}/film_shift_hw", b.gemm(f"{p}/film_shift", style, STYLE_DIM, c, 0.5))
    h = b.add(f"{p}/film_add", b.mul(f"{p}/film_mul", h, scale), shift)
    h = b.act(f"{p}/act1", h)
    h = b.act(f"{p}/act2", b.conv(f"{p}/conv1", h, c, c))
    # the second conv starts small so the sum of GEN_BLOCKS residuals stays in range
    h = b.conv(f"{p}/conv2", h, c, c, gain=1.0 / math.sqrt(GEN_BLOCKS))
    return b.add(f"{p}/residual", x, h, out=f"{p}/out")


def _up_block(b: GraphBuilder, k: int, x: str, c_in: int, c_out: int) -> str:
    p = f"up{k}"
    h = b.conv(f"{p}/conv", b.resize2x(f"{p}/resize", x), c_in, c_out)
    return b.act(f"{p}/act", b.instance_norm(f"{p}/norm", h, c_out), out=f"{p}/out")


def _refiner(b: GraphBuilder, image: str) -> str:
    c = REFINER_CHANNELS
    h = b.act("refiner/in_act", b.conv("refiner/in_conv", image, 3, c))
    for j in range(REFINER_BLOCKS):
        p = f"refiner/block{j}"
        r = b.act(f"{p}/act", b.conv(f"{p}/conv1", h, c, c))
        r = b.conv(f"{p}/conv2", r, c, c, gain=0.5)
        h = b.add(f"{p}/residual", h, r, out=f"{p}/out")
    delta = b.conv("refiner/out_conv", h, c, 3, gain=0.3)
    lo = b.const("refiner/clip.min", np.array(-1.0, np.float32))
    hi = b.const("refiner/clip.max", np.array(1.0, np.float32))
    summed = b.add("refiner/skip", image, delta)
    return b.node("Clip", [summed, lo, hi], "refiner/clip", out=REFINED_IMAGE)


def build_model(seed: int = SEED) -> onnx.ModelProto:
    """The random-image graph, deterministic for a given ``seed``."""
    b = GraphBuilder(seed)
    noise = b.input(NOISE, [1, LATENT_CHANNELS, "h", "w"])
    cond = b.input(COND, [1, COND_DIM])

    style = b.act("mapping/act0", b.gemm("mapping/fc0", cond, COND_DIM, STYLE_DIM, math.sqrt(2.0)))
    style = b.act("mapping/act1", b.gemm("mapping/fc1", style, STYLE_DIM, STYLE_DIM, math.sqrt(2.0)),
                  out="mapping/style")

    x = b.conv("stem/conv", noise, LATENT_CHANNELS, GEN_CHANNELS, gain=1.0, out="stem/out")
    blocks = [x]
    for k in range(GEN_BLOCKS):
        x = _gen_block(b, k, x, style)
        blocks.append(x)
    c = GEN_CHANNELS
    for k, c_out in enumerate(DECODER_CHANNELS, start=1):
        x = _up_block(b, k, x, c, c_out)
        blocks.append(x)
        c = c_out
    # a per-image colour shift from the style makes the conditioning visible at a glance
    color = b.unsqueeze_hw("to_rgb/color_hw", b.gemm("to_rgb/color", style, STYLE_DIM, 3, 0.6))
    rgb = b.add("to_rgb/color_add", b.conv("to_rgb/conv", x, c, 3, gain=0.8), color)
    image = b.act("to_rgb/tanh", rgb, kind="tanh", out=IMAGE)
    blocks.append(image)
    refined = _refiner(b, image)
    blocks.append(refined)

    b.output(IMAGE, [1, 3, "H", "W"])
    b.output(REFINED_IMAGE, [1, 3, "H", "W"])
    side = RESOLUTIONS[0] // LATENT_FACTOR
    metadata = md.encode(
        kind=ModelKind.IMAGE_GENERATOR,
        latent_factor=LATENT_FACTOR,
        cond_dim=COND_DIM,
        resolutions=RESOLUTIONS,
        blocks=blocks,
        refiner_output=REFINED_IMAGE,
        dims={"h": side, "w": side},
    )
    doc = f"tierflow random-image: latent generator + x8 decoder + refiner, random weights (seed {seed})"
    return b.model("demo_image", doc, metadata)


def build(path: Path) -> None:
    """Write random-image to ``path`` (the registry's builder entry point)."""
    onnx.save(build_model(), str(path))
