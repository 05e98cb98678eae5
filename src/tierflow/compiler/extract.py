"""Cut one source model into the FP32 graph of each target (the capability pyramid).

Three shapes of model, told apart by their metadata and signature:

* **causal LMs** (:mod:`tierflow.model.lm_contract`): a target keeps either every
  layer or the layers before the early-exit head. The early-exit graph is cut
  with :class:`~tierflow.model.partition.GraphCutter` (``onnx.utils.Extractor``):
  inputs ``input_ids`` (+ mask / positions) and the first layers' past, outputs
  ``exit_logits`` renamed to ``logits`` and those layers' ``present`` -- itself a
  valid contract LM the generation loop drives unchanged.
* **image generators** (metadata kind ``image-generator``): the refiner
  (the metadata's refiner output) is the cloud-only layers; other targets keep the
  base generator's outputs only, so the refiner's nodes and weights are dropped.
* **anything else** (``vision`` and foreign models): no layer pyramid, only
  precision variants -- unless a target names cut tensors (``outputs``).

The result of a cut is still FP32; :mod:`tierflow.compiler.quantize` changes precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from tierflow.errors import ConfigError, InvalidModelError, PlanError
from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.model import text_to_image as t2i
from tierflow.model.package import LayerGroup
from tierflow.model.partition import GraphCutter
from tierflow.model.pyramid import TargetConfig
from tierflow.types.models import ModelKind


@dataclass
class TargetGraph:
    """The FP32 graph of one target, before its precision is changed."""

    model: onnx.ModelProto
    layers: list[str]
    max_seq_len: int | None = None
    max_resolution: int | None = None
    quality: str = ""


@dataclass
class SourceModel:
    """The one model a package is compiled from, and what its metadata says about it."""

    model: onnx.ModelProto
    name: str
    kind: ModelKind
    meta: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, model: onnx.ModelProto, name: str) -> SourceModel:
        meta = md.props(model)
        inputs = _graph_inputs(model)
        if lc.LMSignature.is_causal_lm(inputs):
            kind = ModelKind.CAUSAL_LM
        else:
            kind = md.kind(meta) or ModelKind.GENERIC
            if kind == ModelKind.CAUSAL_LM:
                raise InvalidModelError(
                    f"{name} says it is a causal LM but has no input_ids / past_key_values"
                )
        return cls(model, name, kind, meta)

    @property
    def outputs(self) -> list[str]:
        return [o.name for o in self.model.graph.output]

    @property
    def inputs(self) -> list[str]:
        return _graph_inputs(self.model)


class Pyramid:
    """How a kind of model is cut; subclasses per kind."""

    def __init__(self, source: SourceModel) -> None:
        self.source = source
        self._cutter: GraphCutter | None = None

    @property
    def cutter(self) -> GraphCutter:
        if self._cutter is None:
            self._cutter = GraphCutter(self.source.model)
        return self._cutter

    def info(self) -> dict[str, int | None]:
        return {}

    def cut(self, name: str, spec: TargetConfig) -> TargetGraph:
        raise NotImplementedError

    def groups(self, graphs: dict[str, TargetGraph]) -> tuple[LayerGroup, LayerGroup, LayerGroup]:
        raise NotImplementedError

    def _extract(self, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
        try:
            return self.cutter.extract(inputs, outputs)
        except PlanError as exc:
            raise ConfigError(f"cannot cut {self.source.name}: {exc}") from exc


def pyramid_for(source: SourceModel) -> Pyramid:
    if source.kind == ModelKind.CAUSAL_LM:
        return LMPyramid(source)
    if source.kind == ModelKind.IMAGE_GENERATOR and t2i.TOKENS in source.inputs:
        return PipelinePyramid(source)
    if source.kind == ModelKind.IMAGE_GENERATOR:
        return ImagePyramid(source)
    return GenericPyramid(source)


class LMPyramid(Pyramid):
    def __init__(self, source: SourceModel) -> None:
        super().__init__(source)
        self.num_layers = len([n for n in source.inputs if n.startswith("past_key_values.")]) // 2
        self._exit_graphs: dict[int, onnx.ModelProto] = {}
        exit_layer = md.exit_layer(source.meta)
        self.exit_layer = exit_layer if lc.EXIT_LOGITS in source.outputs else None
        if self.exit_layer is not None and not 1 <= self.exit_layer < self.num_layers:
            raise InvalidModelError(
                f"{source.name}: {md.EXIT_LAYER}={self.exit_layer} "
                f"but the model has {self.num_layers} layers"
            )
        self.max_seq_len = md.max_seq_len(source.meta)

    def info(self) -> dict[str, int | None]:
        return {"num_layers": self.num_layers, "exit_layer": self.exit_layer, "max_seq_len": self.max_seq_len}

    def _depth(self, name: str, spec: TargetConfig) -> int:
        if spec.outputs is not None:
            raise ConfigError(f"target {name}: 'outputs' cuts apply to non-LM models; use 'layers' for an LM")
        if spec.layers == "all":
            return self.num_layers
        if spec.layers == "exit":
            return self.exit_layer or self.num_layers
        assert isinstance(spec.layers, int)
        if spec.layers > self.num_layers:
            raise ConfigError(
                f"target {name} asks for {spec.layers} layers; {self.source.name} has {self.num_layers}"
            )
        if spec.layers not in (self.num_layers, self.exit_layer):
            exits = f"after layer {self.exit_layer} or " if self.exit_layer else ""
            raise ConfigError(
                f"target {name} asks for {spec.layers} layers, but {self.source.name} can only stop "
                f"{exits}after all {self.num_layers} (it has no exit head after layer {spec.layers})"
            )
        return spec.layers

    def _components(self, depth: int) -> list[str]:
        layers = [f"layers.{i}" for i in range(depth)]
        if depth == self.num_layers:
            heads = ["final_head"] + (["exit_head"] if self.exit_layer else [])
        else:
            heads = ["exit_head"]
        return ["embeddings", *layers, *heads]

    def cut(self, name: str, spec: TargetConfig) -> TargetGraph:
        depth = self._depth(name, spec)
        cap = [v for v in (spec.max_seq_len, self.max_seq_len) if v is not None]
        max_seq_len = min(cap) if cap else None
        if depth == self.num_layers:
            model = _copy(self.source.model)
            quality = f"all {depth} layers"
        else:
            model = self._early_exit(depth)
            quality = f"layers 0..{depth - 1} of {self.num_layers} + exit head"
        if max_seq_len is not None:
            md.write_metadata(model, max_seq_len=max_seq_len)
            quality += f", {max_seq_len}-token context"
        return TargetGraph(model, self._components(depth), max_seq_len=max_seq_len, quality=quality)

    def _early_exit(self, depth: int) -> onnx.ModelProto:
        if depth not in self._exit_graphs:
            self._exit_graphs[depth] = self._cut_early_exit(depth)
        return _copy(self._exit_graphs[depth])

    def _cut_early_exit(self, depth: int) -> onnx.ModelProto:
        inputs = [n for n in self.source.inputs if not n.startswith("past_key_values.")]
        inputs += [lc.past_name(i, k) for i in range(depth) for k in ("key", "value")]
        outputs = [lc.EXIT_LOGITS] + [lc.present_name(i, k) for i in range(depth) for k in ("key", "value")]
        try:
            model = self.cutter.extract(inputs, outputs)
        except PlanError as exc:
            raise InvalidModelError(
                f"{self.source.name}: the exit head after layer {depth} depends on later layers ({exc})"
            ) from exc
        _rename_tensor(model, lc.EXIT_LOGITS, lc.LOGITS)
        md.write_metadata(model, num_layers=depth)
        md.drop_metadata(model, md.EXIT_LAYER)
        return model

    def groups(self, graphs: dict[str, TargetGraph]) -> tuple[LayerGroup, LayerGroup, LayerGroup]:
        full = self._components(self.num_layers)
        if self.exit_layer is None:
            return (
                LayerGroup(components=full, parameters=_params(self.source.model, None)),
                LayerGroup(components=[], parameters=0),
                LayerGroup(components=[], parameters=0),
            )
        base = self._components(self.exit_layer)
        base_names = _initializer_names(self._early_exit(self.exit_layer))
        edge = [c for c in full if c not in base]
        return (
            LayerGroup(components=base, parameters=_params(self.source.model, base_names)),
            LayerGroup(components=edge, parameters=_params(self.source.model, None, exclude=base_names)),
            LayerGroup(components=[], parameters=0),
        )


class ImagePyramid(Pyramid):
    def __init__(self, source: SourceModel) -> None:
        super().__init__(source)
        refiner = md.refiner_output(source.meta)
        self.refiner = refiner if refiner in source.outputs else None
        self.base_outputs = [o for o in source.outputs if o != self.refiner]
        sizes = md.resolutions(source.meta)
        self.resolutions = sorted(sizes)
        self.max_resolution = max(sizes) if sizes else None

    def info(self) -> dict[str, int | None]:
        return {"max_resolution": self.max_resolution}

    def cut(self, name: str, spec: TargetConfig) -> TargetGraph:
        if isinstance(spec.layers, int):
            raise ConfigError(
                f"target {name} asks for {spec.layers} layers, but {self.source.name} is an image generator "
                "with no layer pyramid (use cloud_layers / outputs)"
            )
        keep_refiner = spec.cloud_layers and self.refiner is not None
        if spec.outputs is not None:
            model = self._extract(self.source.inputs, list(spec.outputs))
            layers = [_cut_component(spec.outputs)]
        elif keep_refiner:
            model = _copy(self.source.model)
            layers = ["generator", "refiner"]
        else:
            model = self._extract(self.source.inputs, self.base_outputs)
            layers = ["generator"]
        cap = [v for v in (spec.max_resolution, self.max_resolution) if v is not None]
        max_res = min(cap) if cap else None
        if max_res is not None:
            sizes = [r for r in self.resolutions if r <= max_res] or [max_res]
            md.write_metadata(model, max_resolution=max_res, resolutions=sizes)
        quality = "generator + refiner" if "refiner" in layers else "base generator, no refiner"
        if max_res is not None:
            quality += f", up to {max_res} px"
        return TargetGraph(model, layers, max_resolution=max_res, quality=quality)

    def groups(self, graphs: dict[str, TargetGraph]) -> tuple[LayerGroup, LayerGroup, LayerGroup]:
        base_model = self._extract(self.source.inputs, self.base_outputs)
        base_names = _initializer_names(base_model)
        cuts = sorted({c for g in graphs.values() for c in g.layers if c.startswith("upto:")})
        return (
            LayerGroup(components=["generator", *cuts], parameters=_params(self.source.model, base_names)),
            LayerGroup(components=[], parameters=0),
            LayerGroup(
                components=["refiner"] if self.refiner else [],
                parameters=_params(self.source.model, None, exclude=base_names),
            ),
        )


class PipelinePyramid(Pyramid):
    """The text-to-image pipeline (:mod:`tierflow.model.text_to_image`): a target keeps the resolution
    stages up to its cap and, with ``cloud_layers``, the refiner's chain; ``layers: exit`` (the phone)
    takes the few-step sampler, whose outputs are renamed to the ordinary ones."""

    def __init__(self, source: SourceModel) -> None:
        super().__init__(source)
        self.config: dict[str, object] = md.config(source.meta)
        self.max_resolution = max(t2i.RESOLUTIONS)

    def info(self) -> dict[str, int | None]:
        return {"max_resolution": self.max_resolution}

    def cut(self, name: str, spec: TargetConfig) -> TargetGraph:
        if isinstance(spec.layers, int):
            raise ConfigError(f"target {name}: a text-to-image pipeline has no layer count; use exit or all")
        if spec.outputs is not None:
            model = self._extract(self.source.inputs, list(spec.outputs))
            return TargetGraph(model, self._components(model), quality=f"cut at {', '.join(spec.outputs)}")
        cap = min(spec.max_resolution or self.max_resolution, self.max_resolution)
        sizes = [r for r in t2i.RESOLUTIONS if r <= cap]
        config = dict(self.config)
        if spec.layers == "exit":
            sizes = [r for r in sizes if r <= t2i.FAST_MAX]
            model = self._extract(self.source.inputs, [f"{t2i.FAST_PREFIX}{r}" for r in sizes])
            for r in sizes:
                _rename_tensor(model, f"{t2i.FAST_PREFIX}{r}", t2i.image_output(r))
            config["steps"] = config.get("fast_steps")
            blocks = [f"fast{i}/x" for i in range(int(str(config.get("fast_steps") or 0)))]
        else:
            refined = [t2i.image_output(r, True) for r in sizes if r >= 256] if spec.cloud_layers else []
            model = self._extract(self.source.inputs, [t2i.image_output(r) for r in sizes] + refined)
            blocks = [f"step{i}/x" for i in range(int(str(config.get("steps") or 0)))]
        top = max(sizes)
        md.write_metadata(model, max_resolution=top, resolutions=sizes, config=config,
                          blocks=blocks + [t2i.image_output(r) for r in sizes])
        layers = self._components(model)
        stages = " + ".join(layers[2:]) or "no upsampler"
        quality = f"{config.get('steps')}-step sampler, {stages}, up to {top} px"
        return TargetGraph(model, layers, max_resolution=top, quality=quality)

    @staticmethod
    def _components(model: onnx.ModelProto) -> list[str]:
        names = _initializer_names(model)
        return [c for c in t2i.COMPONENT_FILES if any(n.startswith(f"{c}/") for n in names)]

    def _group(self, components: tuple[str, ...]) -> LayerGroup:
        names = {t.name for t in self.source.model.graph.initializer if t.name.split("/", 1)[0] in components}
        return LayerGroup(components=list(components), parameters=_params(self.source.model, names))

    def groups(self, graphs: dict[str, TargetGraph]) -> tuple[LayerGroup, LayerGroup, LayerGroup]:
        return (self._group(t2i.BASE_COMPONENTS), self._group(t2i.EDGE_COMPONENTS),
                self._group(t2i.CLOUD_COMPONENTS))


class GenericPyramid(Pyramid):
    """Foreign and vision models: precision variants, or explicit cuts at named tensors."""

    def cut(self, name: str, spec: TargetConfig) -> TargetGraph:
        if isinstance(spec.layers, int):
            raise ConfigError(
                f"target {name} asks for {spec.layers} layers, but {self.source.name} ({self.source.kind}) "
                "has no layer pyramid; name cut tensors with 'outputs'"
            )
        if spec.outputs is None:
            return TargetGraph(_copy(self.source.model), ["graph"], quality="the whole model")
        model = self._extract(self.source.inputs, list(spec.outputs))
        return TargetGraph(model, [_cut_component(spec.outputs)], quality=f"cut at {', '.join(spec.outputs)}")

    def groups(self, graphs: dict[str, TargetGraph]) -> tuple[LayerGroup, LayerGroup, LayerGroup]:
        cuts = sorted({c for g in graphs.values() for c in g.layers if c.startswith("upto:")})
        total = _params(self.source.model, None)
        if not cuts:
            return (
                LayerGroup(components=["graph"], parameters=total),
                LayerGroup(components=[], parameters=0),
                LayerGroup(components=[], parameters=0),
            )
        names: set[str] = set()
        for g in graphs.values():
            if any(c.startswith("upto:") for c in g.layers):
                names |= _initializer_names(g.model)
        base = _params(self.source.model, names)
        # "graph" (the uncut model) is every weight; the edge group holds what the cuts leave out
        return (
            LayerGroup(components=cuts, parameters=base),
            LayerGroup(components=["graph"], parameters=total - base),
            LayerGroup(components=[], parameters=0),
        )


# --- graph helpers -----------------------------------------------------------------------------


def _graph_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _cut_component(outputs: tuple[str, ...]) -> str:
    return "upto:" + ",".join(outputs)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop per-node doc strings and metadata (exporters put stack traces there); model metadata stays."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            vi.doc_string = ""
        del graph.metadata_props[:]
    return model


def _rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    if new in produced or new in {i.name for i in graph.input}:
        raise InvalidModelError(f"cannot rename {old} to {new}: the cut graph already has a tensor {new}")
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in [*graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def _params(
    model: onnx.ModelProto, names: set[str] | None, exclude: set[str] | frozenset[str] = frozenset()
) -> int:
    """Weight elements of the initializers in ``names`` (all when None), minus ``exclude``."""
    total = 0
    for t in model.graph.initializer:
        if (names is None or t.name in names) and t.name not in exclude and t.data_type in _FLOAT_TYPES:
            total += int(np.prod(t.dims)) if t.dims else 1
    return total


_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}
