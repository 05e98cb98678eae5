"""The networks the split-inference papers measured, for ``tierflow bench split --model alexnet``.

Neurosurgeon (Kang et al., ASPLOS 2017) and DADS (Hu et al., INFOCOM 2019) report their speed-ups
on image classifiers of the AlexNet / ResNet / MobileNet family. This module writes those
architectures in plain PyTorch -- the torchvision definitions (``torchvision.models.alexnet``,
``resnet18``, ``mobilenet_v2``, width 1.0, 1000 classes, 224x224 input), not torchvision itself --
with **random weights from a fixed seed** (latency does not depend on the weights), and exports
them to ONNX once, cached under ``tierflow_home()/paper-models``.

Each exported model carries ``tierflow.blocks`` metadata: the output of every layer a
Neurosurgeon-style partition can cut after (AlexNet: each conv+ReLU, pool and fc+ReLU; ResNet-18:
the stem and each basic block; MobileNetV2: each of its 19 feature blocks), then the classifier.

torch is the optional ``export`` extra: it is imported only when a model is built, and a missing
torch raises :class:`~tierflow.errors.MissingExtraError`. A model already in the cache needs no
torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.errors import MissingExtraError, ModelNotFoundError
from tierflow.model import metadata as md
from tierflow.model.registry import tierflow_home
from tierflow.types import ModelKind

VERSION = "2"  # bump when an architecture or the export changes: the cache is keyed by it
SEED = 0
INPUT = "image"
OUTPUT = "logits"
OPSET = 17
INSTALL_HINT = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class PaperModel:
    name: str
    description: str
    blocks: tuple[tuple[str, str], ...]  # (module path whose output ends a block, the block's name), in order
    head: str  # the name of what follows the last block (the classifier)
    build: str  # the builder's name in this module


# AlexNet features: 0 conv1, 1 relu, 2 pool1, 3 conv2, 4 relu, 5 pool2, 6 conv3, 7 relu, 8 conv4, 9 relu,
# 10 conv5, 11 relu, 12 pool5; classifier: 0 drop, 1 fc6, 2 relu, 3 drop, 4 fc7, 5 relu, 6 fc8
_ALEXNET = (
    ("features.1", "conv1"),
    ("features.2", "pool1"),
    ("features.4", "conv2"),
    ("features.5", "pool2"),
    ("features.7", "conv3"),
    ("features.9", "conv4"),
    ("features.11", "conv5"),
    ("features.12", "pool5"),
    ("avgpool", "avgpool"),
    ("classifier.2", "fc6"),
    ("classifier.5", "fc7"),
)
_RESNET18 = (
    ("maxpool", "stem"),
    *((f"layer{i}.{j}", f"layer{i}.{j}") for i in range(1, 5) for j in (0, 1)),
    ("avgpool", "avgpool"),
)
# MobileNetV2 features: 0 the stem conv, 1..17 inverted residual blocks, 18 the last 1x1 conv
_MOBILENET_V2 = (
    ("features.0", "stem"),
    *((f"features.{i}", f"ir{i}") for i in range(1, 18)),
    ("features.18", "conv_last"),
)

PAPER_MODELS: dict[str, PaperModel] = {
    m.name: m
    for m in (
        PaperModel(
            "alexnet",
            "AlexNet (Krizhevsky et al. 2012; torchvision's), 61 M parameters, random weights",
            _ALEXNET,
            "fc8",
            "_alexnet",
        ),
        PaperModel(
            "resnet18",
            "ResNet-18 (He et al. 2016; torchvision's), 11.7 M parameters, random weights",
            _RESNET18,
            "fc",
            "_resnet18",
        ),
        PaperModel(
            "mobilenetv2",
            "MobileNetV2 (Sandler et al. 2018; torchvision's), 3.5 M parameters, random weights",
            _MOBILENET_V2,
            "classifier",
            "_mobilenet_v2",
        ),
    )
}


def is_paper_model(name: str) -> bool:
    return name in PAPER_MODELS


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingExtraError(
            "building the paper models (alexnet, resnet18, mobilenetv2) needs torch (the 'export' extra); "
            f"install it: {INSTALL_HINT}"
        ) from exc
    return torch


def cached_path(name: str) -> Path:
    """Where the exported model is cached (whether or not it exists yet)."""
    return tierflow_home() / "paper-models" / f"{name}-v{VERSION}-seed{SEED}.onnx"


def ensure_paper_model(name: str) -> Path:
    """The ONNX file of paper model ``name``, exported on first use (atomically) into the cache."""
    spec = PAPER_MODELS.get(name)
    if spec is None:
        raise ModelNotFoundError(f"unknown paper model {name!r} (known: {', '.join(PAPER_MODELS)})")
    path = cached_path(name)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        export(name, tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written model under the real name
    finally:
        tmp.unlink(missing_ok=True)
    return path


def build_module(name: str) -> Any:
    """The ``torch.nn.Module`` of paper model ``name`` (eval mode, weights from ``SEED``)."""
    torch = _torch()
    spec = PAPER_MODELS[name]
    builder: Callable[[Any], Any] = globals()[spec.build]
    torch.manual_seed(SEED)
    module = builder(torch.nn)
    return module.eval()


def export(name: str, path: Path) -> None:
    """Export paper model ``name`` to ``path`` (TorchScript exporter: it keeps module paths in node names,
    which is how the block boundaries are found), with tierflow metadata."""
    import onnx

    torch = _torch()
    spec = PAPER_MODELS[name]
    module = build_module(name)
    example = torch.zeros(1, 3, 224, 224)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    blocks = block_outputs(proto, [module for module, _ in spec.blocks])
    name_by_block(proto, blocks, [label for _, label in spec.blocks], spec.head)
    del proto.metadata_props[:]
    meta = md.encode(
        kind=ModelKind.VISION,
        num_classes=1000,
        input_size=224,
        blocks=blocks,
        paper_model=f"{name} v{VERSION} seed {SEED}",
    )
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = spec.description
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def block_outputs(proto: Any, modules: list[str]) -> list[str]:
    """The output tensor of each module in ``modules``: the last node exported under its scope
    (``/layer1/layer1.0/...`` for ``layer1.0``)."""
    out: list[str] = []
    for module in modules:
        parts = module.split(".")
        scope = "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + "/"
        last = [n for n in proto.graph.node if n.name.startswith(scope)]
        if not last:
            raise ModelNotFoundError(f"no exported node under {scope} (module {module})")
        out.append(last[-1].output[0])
    return out


def name_by_block(proto: Any, blocks: list[str], labels: list[str], head: str) -> None:
    """Prefix every node's name with the name of its block (``conv1/features/features.0/Conv``), so
    the planner's units read ``conv1``, ``pool1``, ...: a node belongs to the first block whose output
    is produced at or after it (the graph is in topological order, and each of these networks is a
    chain of blocks); nodes after the last block belong to ``head``."""
    producer = {out: i for i, node in enumerate(proto.graph.node) for out in node.output}
    ends = [producer[b] for b in blocks]
    for i, node in enumerate(proto.graph.node):
        label = next((lab for end, lab in zip(ends, labels, strict=True) if i <= end), head)
        node.name = f"{label}{node.name if node.name.startswith('/') else '/' + node.name}"


# --- the architectures (torchvision's, in plain PyTorch) ---------------------------------------------


def _alexnet(nn: Any) -> Any:
    class AlexNet(nn.Module):  # type: ignore[misc]
        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(64, 192, kernel_size=5, padding=2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(192, 384, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=0.5),
                nn.Linear(256 * 6 * 6, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(p=0.5),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )

        def forward(self, x: Any) -> Any:
            x = self.avgpool(self.features(x))
            return self.classifier(x.flatten(1))

    return AlexNet()


def _init_conv_bn(nn: Any, module: Any) -> None:
    """torchvision's initialisation: Kaiming-normal convolutions (fan out), unit batch norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _resnet18(nn: Any) -> Any:
    class BasicBlock(nn.Module):  # type: ignore[misc]
        def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x: Any) -> Any:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet18(nn.Module):  # type: ignore[misc]
        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
            self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
            self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
            self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    model = ResNet18()
    _init_conv_bn(nn, model)
    return model


def _mobilenet_v2(nn: Any) -> Any:
    def conv_bn(inp: int, oup: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> Any:
        layers = [
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        return nn.Sequential(*layers)

    class InvertedResidual(nn.Module):  # type: ignore[misc]
        def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = inp * expand
            self.use_res_connect = stride == 1 and inp == oup
            layers = [conv_bn(inp, hidden, 1, 1)] if expand != 1 else []
            layers += [
                conv_bn(hidden, hidden, 3, stride, groups=hidden),
                conv_bn(hidden, oup, 1, 1, act=False),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):  # type: ignore[misc]
        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            settings = [
                (1, 16, 1, 1),
                (6, 24, 2, 2),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1),
            ]  # expansion t, channels c, repeats n, stride s
            inp = 32
            features = [conv_bn(3, inp, 3, 2)]
            for t, c, n, s in settings:
                for i in range(n):
                    features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                    inp = c
            features.append(conv_bn(inp, 1280, 1, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(1280, num_classes))

        def forward(self, x: Any) -> Any:
            x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(x.flatten(1))

    model = MobileNetV2()
    _init_conv_bn(nn, model)
    return model
