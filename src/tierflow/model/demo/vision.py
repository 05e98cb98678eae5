"""``demo-vision``: an image classifier whose graph is a DAG (branches and skips), random weights.

It exists so that split planning has a general graph to cut, not only a chain::

    image [batch, 3, 224, 224]
      |
    stem/      conv3x3 s2 -> BN -> ReLU -> conv3x3 s2 -> BN -> ReLU          56 x 56 x 64
      |--------------------------------------------------------------.
    inc1/      four parallel branches (1x1 | 1x1-3x3 | 1x1-3x3-3x3 |     | long skip
               maxpool-1x1), concatenated, + 1x1 projection of the input  |
    down1/     conv3x3 s2 -> BN -> ReLU                         28 x 28    |
    res1/      conv-BN-ReLU-conv-BN, + input, ReLU                         |
    inc2/      inception block again, + projection                         |
    down2/     conv3x3 s2 -> BN -> ReLU                         14 x 14    |
    res2/      residual block                                              |
    skip/      avgpool 4x4 s4 -> 1x1 conv of stem/out, added  <------------'
    head/      GlobalAveragePool -> Flatten -> Gemm              ==> logits [batch, 100]

Metadata: ``tierflow.kind`` = ``vision``, ``tierflow.num_classes``,
``tierflow.input_size``, ``tierflow.blocks`` (JSON list of block output
tensors in topological order; inside the long skip a cut also carries
``stem/out``).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from tierflow.model import metadata as md
from tierflow.model.onnx_build import GraphBuilder
from tierflow.types.models import ModelKind

SEED = 20261126
IMAGE = "image"
LOGITS = "logits"
INPUT_SIZE = 224
NUM_CLASSES = 100


def _conv_bn(b: GraphBuilder, p: str, x: str, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
             relu: bool = True, out: str | None = None) -> str:
    h = b.conv(f"{p}_conv", x, c_in, c_out, kernel, stride, bias=False)
    if not relu:
        return b.batch_norm(f"{p}_bn", h, c_out, out=out)
    return b.act(f"{p}_relu", b.batch_norm(f"{p}_bn", h, c_out), kind="relu", out=out)


def _inception(
    b: GraphBuilder, p: str, x: str, c_in: int, widths: tuple[int, int, int, int]
) -> tuple[str, int]:
    """Four parallel branches of ``widths`` channels, concatenated, plus a projected residual."""
    w1, w3, w5, wp = widths
    b1 = _conv_bn(b, f"{p}/b1x1", x, c_in, w1, 1)
    b2 = _conv_bn(b, f"{p}/b3x3", _conv_bn(b, f"{p}/b3x3_reduce", x, c_in, w3 // 2, 1), w3 // 2, w3)
    b3 = _conv_bn(b, f"{p}/b5x5_reduce", x, c_in, w5 // 2, 1)
    b3 = _conv_bn(b, f"{p}/b5x5_a", b3, w5 // 2, w5)
    b3 = _conv_bn(b, f"{p}/b5x5_b", b3, w5, w5)
    pool = b.node("MaxPool", [x], f"{p}/bpool_pool", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    b4 = _conv_bn(b, f"{p}/bpool", pool, c_in, wp, 1)
    c_out = sum(widths)
    cat = b.concat(f"{p}/concat", [b1, b2, b3, b4])
    proj = _conv_bn(b, f"{p}/proj", x, c_in, c_out, 1, relu=False)
    summed = b.add(f"{p}/residual", cat, proj)
    return b.act(f"{p}/relu", summed, kind="relu", out=f"{p}/out"), c_out


def _residual(b: GraphBuilder, p: str, x: str, c: int) -> str:
    h = _conv_bn(b, f"{p}/a", x, c, c)
    h = _conv_bn(b, f"{p}/b", h, c, c, relu=False)
    return b.act(f"{p}/relu", b.add(f"{p}/residual", x, h), kind="relu", out=f"{p}/out")


def build_model(seed: int = SEED) -> onnx.ModelProto:
    """The demo-vision graph, deterministic for a given ``seed``."""
    b = GraphBuilder(seed)
    x = b.input(IMAGE, ["batch", 3, INPUT_SIZE, INPUT_SIZE])
    h = _conv_bn(b, "stem/a", x, 3, 32, stride=2)
    stem = _conv_bn(b, "stem/b", h, 32, 64, stride=2, out="stem/out")  # 56 x 56
    h, c = _inception(b, "inc1", stem, 64, (32, 48, 24, 24))  # 128 ch
    h = _conv_bn(b, "down1/a", h, c, 96, stride=2, out="down1/out")  # 28 x 28
    h = _residual(b, "res1", h, 96)
    h, c = _inception(b, "inc2", h, 96, (48, 64, 32, 32))  # 176 ch
    h = _conv_bn(b, "down2/a", h, c, 192, stride=2, out="down2/out")  # 14 x 14
    h = _residual(b, "res2", h, 192)
    pooled = b.node("AveragePool", [stem], "skip/pool", kernel_shape=[4, 4], strides=[4, 4])
    skip = b.conv("skip/proj", pooled, 64, 192, kernel=1, gain=0.5)
    h = b.add("skip/add", h, skip, out="skip/out")
    g = b.node("GlobalAveragePool", [h], "head/pool")
    g = b.node("Flatten", [g], "head/flatten", axis=1)
    b.gemm("head/fc", g, 192, NUM_CLASSES, out=LOGITS)
    b.output(LOGITS, ["batch", NUM_CLASSES])
    blocks = ["stem/out", "inc1/out", "down1/out", "res1/out", "inc2/out", "down2/out", "res2/out",
              "skip/out"]
    metadata = md.encode(kind=ModelKind.VISION, num_classes=NUM_CLASSES, input_size=INPUT_SIZE, blocks=blocks)
    doc = f"tierflow demo-vision: inception/residual classifier, long skip, random weights (seed {seed})"
    return b.model("demo_vision", doc, metadata)


def build(path: Path) -> None:
    """Write demo-vision to ``path`` (the registry's builder entry point)."""
    onnx.save(build_model(), str(path))

