"""One model in, every target out: the compiler behind ``tierflow compile``.

For each target of the pyramid config the compiler

1. cuts the source to the target's layers (:mod:`tierflow.compiler.extract`, still FP32);
2. changes its precision (:mod:`tierflow.compiler.quantize`): INT8 / FP16 / FP32;
3. runs the result against its FP32 counterpart and the full FP32 model
   (:mod:`tierflow.compiler.fidelity`) and compares the figures with the target's floor.

Only when every target is built and meets its floor is the package written
(atomically, :func:`tierflow.model.package.write_package`); otherwise the
compiler raises :class:`FidelityError` (carrying the report) and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path

import onnx

from tierflow.compiler.calibration import (
    Feeds,
    calibration_text,
    generated_feeds,
    lm_windows,
    load_feeds,
)
from tierflow.compiler.extract import SourceModel, TargetGraph, pyramid_for, strip_debug_info
from tierflow.compiler.fidelity import below_floor, lm_fidelity, open_cpu, tensor_fidelity
from tierflow.compiler.quantize import has_conv, to_fp16, to_int8_dynamic, to_int8_static
from tierflow.errors import ConfigError, FidelityError, InvalidModelError
from tierflow.model import metadata as md
from tierflow.model import text_to_image as t2i
from tierflow.model.package import (
    Manifest,
    ModelInfo,
    TargetManifest,
    artifact_name,
    sha256_hex,
    write_package,
)
from tierflow.model.partition import GraphCutter
from tierflow.model.pyramid import PyramidConfig, TargetConfig, default_pyramid
from tierflow.model.registry import BUNDLED, resolve_model
from tierflow.runtime.lm import CausalLM
from tierflow.types.models import ModelKind


@dataclass
class TargetResult:
    name: str
    spec: TargetManifest
    misses: list[str]  # floors this target fails, empty when it passes
    method: str  # how its precision was made, e.g. "dynamic INT8"
    check: str  # what fidelity was measured on


@dataclass
class CompileReport:
    source: str
    kind: ModelKind
    output: Path
    targets: list[TargetResult] = field(default_factory=list)
    manifest: Manifest | None = None
    written: bool = False

    @property
    def failures(self) -> list[TargetResult]:
        return [t for t in self.targets if t.misses]

    def size_ratio(self) -> tuple[str, str, float] | None:
        """``(small, large, size_small / size_large)`` for phone/cloud, or the first/last target."""
        by_name = {t.name: t for t in self.targets}
        if "phone" in by_name and "cloud" in by_name:
            small, large = by_name["phone"], by_name["cloud"]
        elif len(self.targets) >= 2:
            small, large = self.targets[0], self.targets[-1]
        else:
            return None
        return small.name, large.name, small.spec.size_bytes / max(large.spec.size_bytes, 1)


Progress = Callable[[str], None]


def compile_model(
    source: str | Path,
    output: str | Path,
    *,
    config: PyramidConfig | None = None,
    targets: list[str] | None = None,
    calibration: str | Path | None = None,
    progress: Progress | None = None,
) -> CompileReport:
    """Compile ``source`` (a path or bundled name) into the package ``output``; see the module doc."""
    say = progress or (lambda _msg: None)
    output = Path(output)
    cfg = (config or default_pyramid()).select(targets)
    path = resolve_model(source)
    name = str(source) if str(source) in BUNDLED else path.stem
    src = _load_source(path, name)
    pyramid = pyramid_for(src)

    # every cut first: a config that asks for layers the model lacks fails before any slow work
    graphs = {t: pyramid.cut(t, spec) for t, spec in cfg.targets.items()}
    for graph in graphs.values():
        strip_debug_info(graph.model)
    base, edge_layers, cloud_layers = pyramid.groups(graphs)
    source_bytes = path.read_bytes()
    checker = _Checker(src, source_bytes, cfg, calibration)

    report = CompileReport(source=str(source), kind=src.kind, output=output)
    artifacts: dict[str, bytes] = {}
    for target, spec in cfg.targets.items():
        say(f"compiling {target} ({spec.precision})")
        graph = graphs[target]
        model, method = _convert(graph.model, spec, src.kind, checker)
        if t2i.TOKENS in src.inputs:
            _stages_start_at_outputs(model)
        md.write_metadata(model, target=target, precision=spec.precision)
        data = model.SerializeToString()
        say(f"measuring {target}")
        fp32 = _with_target_meta(graph.model, target).SerializeToString()
        metrics, check = checker.measure(data, fp32, graph)
        manifest_entry = TargetManifest(
            device_class=spec.device_class,
            layers=graph.layers,
            precision=spec.precision,
            max_seq_len=graph.max_seq_len,
            max_resolution=graph.max_resolution,
            artifact=artifact_name(target),
            size_bytes=len(data),
            sha256=sha256_hex(data),
            inputs=[i.name for i in _inputs(model)],
            outputs=[o.name for o in model.graph.output],
            requires=spec.requires,
            fidelity={k: round(v, 6) for k, v in metrics.items()},
            quality=f"{graph.quality}, {spec.precision.upper()}",
        )
        report.targets.append(
            TargetResult(target, manifest_entry, below_floor(metrics, spec.floor), method, check)
        )
        artifacts[manifest_entry.artifact] = data

    if report.failures:
        detail = "; ".join(f"{t.name}: {', '.join(t.misses)}" for t in report.failures)
        # the report rides along: the CLI prints every target's numbers before the error
        raise FidelityError(f"below the fidelity floor ({detail}); nothing written", report=report)

    info = pyramid.info()
    report.manifest = Manifest(
        created_by=f"tierflow {package_version('tierflow')}",
        model=ModelInfo(
            name=name,
            kind=src.kind,
            source_sha256=sha256_hex(source_bytes),
            source_size_bytes=len(source_bytes),
            num_layers=info.get("num_layers"),
            exit_layer=info.get("exit_layer"),
            max_seq_len=info.get("max_seq_len"),
            max_resolution=info.get("max_resolution"),
        ),
        base=base,
        edge_layers=edge_layers,
        cloud_layers=cloud_layers,
        targets={t.name: t.spec for t in report.targets},
    )
    say(f"writing {output}")
    write_package(output, report.manifest, artifacts)
    report.written = True
    return report


def _load_source(path: Path, name: str) -> SourceModel:
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, onnx raises its own
        raise InvalidModelError(f"{path} is not a valid ONNX model: {' '.join(str(exc).split())}") from exc
    if not model.graph.node:
        raise InvalidModelError(f"{path} is not a valid ONNX model: the graph is empty")
    return SourceModel.from_proto(model, name)


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _stages_start_at_outputs(model: onnx.ModelProto) -> None:
    """After FP16 conversion a graph output (``image_64``) is a Cast of an inner FP16 tensor that the next
    stage reads; rewire that stage to read the output itself (cast back, exactly), so the runtime can
    cut the pipeline at its outputs and start a stage from one."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    rewired: list[onnx.NodeProto] = []
    for node in nodes:
        rewired.append(node)
        if node.op_type != "Cast" or node.output[0] not in outputs:
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        inner, name = node.input[0], node.output[0]
        users = [n for n in nodes if n is not node and inner in n.input]
        if to != onnx.TensorProto.FLOAT or not users:
            continue
        back = f"{name}/fp16"
        rewired.append(onnx.helper.make_node(
            "Cast", [name], [back], name=f"{name}/to_fp16", to=onnx.TensorProto.FLOAT16
        ))
        for user in users:
            user.input[:] = [back if i == inner else i for i in user.input]
    del graph.node[:]
    given = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    graph.node.extend(_topological(rewired, given))


def _topological(nodes: list[onnx.NodeProto], given: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where each comes after what it reads (stable where the order was one)."""
    ready, done, waiting = set(given), [], list(nodes)
    while waiting:
        left = []
        for node in waiting:
            if all(not i or i in ready for i in node.input):
                done.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(waiting):
            raise InvalidModelError(f"the graph has a cycle or a missing tensor near {left[0].name}")
        waiting = left
    return done


def _first_stages(data: bytes) -> bytes:
    """A pipeline target cut to its sampler, first upsampler and refiner: ONNX Runtime would run
    every stage up to 2048 px for any output, and these carry what the precision changed."""
    model = onnx.load_from_string(data)
    have = {o.name for o in model.graph.output}
    first = (t2i.image_output(64), t2i.image_output(256), t2i.image_output(256, True))
    graph = GraphCutter(model)
    cut: bytes = graph.extract(graph.graph_inputs, [n for n in first if n in have]).SerializeToString()
    return cut


def _with_target_meta(model: onnx.ModelProto, target: str) -> onnx.ModelProto:
    md.write_metadata(model, target=target)
    return model


def _convert(
    model: onnx.ModelProto, spec: TargetConfig, kind: ModelKind, checker: _Checker
) -> tuple[onnx.ModelProto, str]:
    if spec.precision == "fp32":
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, "FP32"
    if spec.precision == "fp16":
        return to_fp16(model), "FP16, FP32 I/O"
    if kind != ModelKind.CAUSAL_LM and has_conv(model):
        return to_int8_static(model, checker.calibration_feeds(model)), "static INT8 (QDQ)"
    return to_int8_dynamic(model), "dynamic INT8"


class _Checker:
    """Builds calibration / check inputs once per compile and measures each target."""

    def __init__(
        self, src: SourceModel, source_bytes: bytes, cfg: PyramidConfig, calibration: str | Path | None
    ):
        self.src = src
        self.settings = cfg.fidelity
        self.calibration = calibration
        self._full = open_cpu(source_bytes)
        self._full_lm: CausalLM | None = CausalLM(self._full) if src.kind == ModelKind.CAUSAL_LM else None
        self._given: list[Feeds] | None = None
        if calibration is not None and src.kind != ModelKind.CAUSAL_LM:
            path = Path(calibration)
            if not path.exists():
                raise ConfigError(
                    f"calibration {calibration} not found (a {src.kind} model takes a folder of .npz feeds)"
                )
            self._given = load_feeds(path, self._full)

    def _resolution(self, graph: TargetGraph | None) -> int:
        res = self.settings.resolution
        return min(res, graph.max_resolution) if graph and graph.max_resolution else res

    def calibration_feeds(self, model: onnx.ModelProto) -> list[Feeds]:
        """Static-INT8 calibration inputs: the user's, or generated with a seed other than the checks'."""
        names = {i.name for i in _inputs(model)}
        feeds = self._given or generated_feeds(
            self._full,
            self.src.meta,
            self.settings.calibration_samples,
            self.settings.seed + 1,
            self.settings.resolution,
        )
        return [{k: v for k, v in f.items() if k in names} for f in feeds]

    def measure(self, data: bytes, fp32: bytes, graph: TargetGraph) -> tuple[dict[str, float], str]:
        if self._full_lm is not None:
            return self._measure_lm(data, fp32, graph)
        if t2i.TOKENS in self.src.inputs:  # a pipeline: the sampler and the first stages say it all
            data, fp32 = _first_stages(data), _first_stages(fp32)
        target, counterpart = open_cpu(data), open_cpu(fp32)
        if self._given is not None:
            samples, check = self._given, f"{len(self._given)} given inputs"
        else:
            res = self._resolution(graph) if self.src.kind == ModelKind.IMAGE_GENERATOR else None
            samples = generated_feeds(
                self._full, self.src.meta, self.settings.samples, self.settings.seed, res
            )
            check = f"{len(samples)} generated inputs" + (f" at {res} px" if res else "")
        names = {i.name for i in target.get_inputs()}
        samples = [{k: v for k, v in f.items() if k in names} for f in samples]
        images = [o.name for o in target.get_outputs()] if self.src.kind == ModelKind.IMAGE_GENERATOR else []
        return tensor_fidelity(target, counterpart, samples, images), check

    def _measure_lm(self, data: bytes, fp32: bytes, graph: TargetGraph) -> tuple[dict[str, float], str]:
        assert self._full_lm is not None
        target, counterpart = CausalLM(open_cpu(data)), CausalLM(open_cpu(fp32))
        window = self.settings.lm_window
        if graph.max_seq_len is not None:
            window = min(window, graph.max_seq_len)
        vocab = self._vocab()
        text = calibration_text(str(self.calibration)) if self.calibration is not None else None
        windows, source = lm_windows(
            self._full_lm.tokenizer, vocab, text, window, self.settings.lm_windows, self.settings.seed
        )
        metrics = lm_fidelity(target, counterpart, self._full_lm, windows)
        return metrics, f"{len(windows)} x {window} tokens of {source}"

    def _vocab(self) -> int:
        assert self._full_lm is not None
        import numpy as np

        logits, _ = self._full_lm.forward(np.zeros((1, 1), np.int64), self._full_lm.empty_cache())
        return int(logits.shape[-1])
