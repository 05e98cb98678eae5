"""The text-to-image pipeline as one ONNX graph: text encoder, the sampler unrolled, the resolution stages.

:func:`assemble` inlines the trained components (``model/assets/text_to_image/``: the text
encoder and flow denoiser of :mod:`tierflow.compiler.train_text_to_image`, the upsamplers and the
refiner of :mod:`tierflow.compiler.train_upsamplers`) into one graph, so that packages, the
compiler, nodes and the split planner treat it like any other model::

    tokens ---------> text/      (the prompt and "no text", batch 2: classifier-free guidance)
    noise, init_image, mask, strength, guidance
        |
    fast0/ .. fast7/      8 Euler steps of the flow (the phone's sampler)  --> fast_64 --> up256 --> fast_256
    step0/ .. step24/    25 Euler steps                                   --> image_64
        image_64 --> up256/ --> image_256 --> up2x/ --> image_512 --> image_1024 --> image_2048
        image_64 + pooled --> refiner/ --> refined_256 --> up2x/ --> refined_512 --> ... (cloud only)

Every step runs the one denoiser (its weights are stored once, shared by every step) on the
prompt and on no text, mixes the two velocities by ``guidance`` and takes an Euler step. Before
each step the pixels where ``mask`` is 0, and every pixel while ``t < 1 - strength``, are set to
the noised ``init_image`` on the same path (``(1 - t) noise + t init``): ``mask`` all ones and
``strength`` 1 is plain generation, ``strength`` < 1 is image-to-image (SDEdit: the sampler
takes over from the noised image at ``t = 1 - strength``), a mask is inpainting (RePaint's
replacement: what is outside the mask is the given image at every step, and at the end).

Outputs are named by resolution (``image_256``) so a target keeps the stages up to its cap by
cutting the graph at its outputs; ONNX Runtime runs only what one output needs when the runtime
extracts that output's subgraph (:class:`tierflow.runtime.text_to_image.PipelineGenerator`).

Components (the manifest's layer groups): ``text_encoder``, ``denoiser`` and ``up256`` are the
base (the phone), ``up2x`` the edge layers, ``refiner`` the cloud layers.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tierflow.errors import InvalidModelError
from tierflow.model import metadata as md
from tierflow.model.onnx_build import IR_VERSION, OPSET
from tierflow.model.registry import ASSETS
from tierflow.model.scenes import MAX_TOKENS, PAD_ID
from tierflow.types.models import ModelKind

ASSET_DIR = ASSETS / "text_to_image"
TOKENS = "tokens"
NOISE = "noise"
INIT_IMAGE = "init_image"
MASK = "mask"
STRENGTH = "strength"
GUIDANCE = "guidance"
INPUTS: tuple[str, ...] = (TOKENS, NOISE, INIT_IMAGE, MASK, STRENGTH, GUIDANCE)
BASE = 64
RESOLUTIONS: tuple[int, ...] = (64, 256, 512, 1024, 2048)
FAST_PREFIX = "fast_"  # the few-step chain's outputs: fast_64, fast_256 (a phone target renames them)
FAST_MAX = 256
FULL_STEPS = 25
FAST_STEPS = 8
COMPONENT_FILES = {
    "text_encoder": "text_encoder.onnx",
    "denoiser": "denoiser.onnx",
    "up256": "up256.onnx",
    "up2x": "up2x.onnx",
    "refiner": "refiner.onnx",
}
BASE_COMPONENTS = ("text_encoder", "denoiser", "up256")
EDGE_COMPONENTS = ("up2x",)
CLOUD_COMPONENTS = ("refiner",)


def image_output(resolution: int, refined: bool = False) -> str:
    return f"{'refined' if refined else 'image'}_{resolution}"


@dataclass(frozen=True)
class Component:
    """A trained ONNX file, inlined as many times as needed (its weights once)."""

    name: str
    model: onnx.ModelProto

    @property
    def inputs(self) -> list[str]:
        inits = {t.name for t in self.model.graph.initializer}
        return [i.name for i in self.model.graph.input if i.name not in inits]

    @property
    def outputs(self) -> list[str]:
        return [o.name for o in self.model.graph.output]


#: the batch each component runs at inside the pipeline (the prompt and no text, or one image)
BATCH = {"text_encoder": 2, "denoiser": 2, "up256": 1, "up2x": 1, "refiner": 1}


def load_components(folder: Path = ASSET_DIR) -> dict[str, Component]:
    """The trained files, each at its fixed batch and simplified by ONNX Runtime's basic (standard
    ONNX) optimizations: the exporter's shape arithmetic folds away, a third of the nodes remain."""
    out = {}
    for name, file in COMPONENT_FILES.items():
        path = folder / file
        if not path.is_file():
            raise InvalidModelError(f"the text-to-image model lacks {path} (train it: see docs/MODELS.md)")
        out[name] = Component(name, _simplified(onnx.load(str(path)), BATCH[name]))
    return out


def _simplified(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    import onnxruntime as ort

    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "simplified.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        simplified = onnx.load(options.optimized_model_filepath)
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    return simplified


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._n = 0

    def const(self, name: str, value: np.ndarray | np.generic) -> str:
        self.initializers[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def op(self, op: str, inputs: Sequence[str], out: str | None = None, **attrs: int) -> str:
        self._n += 1
        out = out or f"pipe/{op.lower()}_{self._n}"
        node = helper.make_node(op, list(inputs), [out], name=f"pipe/{op}_{self._n}")
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        self.nodes.append(node)
        return out

    def inline(self, comp: Component, prefix: str, feeds: Mapping[str, str],
               names: Mapping[str, str] | None = None) -> dict[str, str]:
        """Copy ``comp``'s nodes under ``prefix`` with its inputs wired to ``feeds``; weights are
        shared (``<component>/<name>``). Returns its outputs' tensor names (``names`` renames some)."""
        graph = comp.model.graph
        weights = {t.name for t in graph.initializer}
        for t in graph.initializer:
            shared = f"{comp.name}/{t.name}"
            if shared not in self.initializers:
                copy = onnx.TensorProto()
                copy.CopyFrom(t)
                copy.name = shared
                self.initializers[shared] = copy
        outs = {o: (names or {}).get(o, f"{prefix}/{o}") for o in comp.outputs}

        def wire(name: str) -> str:
            if name == "":
                return name
            if name in feeds:
                return feeds[name]
            if name in weights:
                return f"{comp.name}/{name}"
            return outs.get(name, f"{prefix}/{name}")

        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise InvalidModelError(f"component {comp.name} has a subgraph op ({node.op_type})")
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{prefix}/{node.name or node.op_type}"
            copy.input[:] = [wire(i) for i in node.input]
            copy.output[:] = [wire(o) for o in node.output]
            copy.doc_string = ""
            self.nodes.append(copy)
        return outs


def assemble(
    folder: Path = ASSET_DIR, steps: int = FULL_STEPS, fast_steps: int = FAST_STEPS,
    components: Mapping[str, Component] | None = None,
) -> onnx.ModelProto:
    """The whole pipeline as one ONNX model (see the module's docstring)."""
    comps = dict(components) if components is not None else load_components(folder)
    g = _Graph()
    pad = g.const("pipe/no_text", np.full((1, MAX_TOKENS), PAD_ID, np.int64))
    both = g.op("Concat", [TOKENS, pad], axis=0)
    text = g.inline(comps["text_encoder"], "text", {"tokens": both})
    text_feeds = {k: text[k] for k in ("text", "pooled", "text_mask")}
    one = g.const("pipe/one", np.ones(1, np.float32))
    lo, hi = g.const("pipe/lo", np.float32(-1.0)), g.const("pipe/hi", np.float32(1.0))
    start = g.op("Sub", [one, STRENGTH])  # t below this: still the given image's noised path
    inverse = g.op("Sub", [one, MASK])

    def chain(prefix: str, n: int) -> str:
        x = NOISE
        for i in range(n):
            t = i / n
            t_in = g.const(f"{prefix}{i}/t", np.float32(t))
            free = g.op("Cast", [g.op("LessOrEqual", [start, t_in])], to=TensorProto.FLOAT)
            keep = g.op("Mul", [MASK, free])
            path = g.op("Add", [g.op("Mul", [NOISE, g.const(f"{prefix}{i}/1-t", np.float32(1 - t))]),
                                g.op("Mul", [INIT_IMAGE, t_in])])
            x = g.op("Add", [g.op("Mul", [keep, x]), g.op("Mul", [g.op("Sub", [one, keep]), path])])
            pair = g.op("Concat", [x, x], axis=0)
            times = g.const(f"{prefix}{i}/times", np.full(2, t, np.float32))
            v = g.inline(comps["denoiser"], f"{prefix}{i}", {"x": pair, "t": times, **text_feeds})["velocity"]
            v_text, v_none = f"{prefix}{i}/v_text", f"{prefix}{i}/v_none"
            halves = g.const(f"{prefix}{i}/halves", np.array([1, 1], np.int64))
            g.nodes.append(helper.make_node("Split", [v, halves], [v_text, v_none], name=f"{prefix}{i}/split",
                                            axis=0))
            guided = g.op("Add", [v_none, g.op("Mul", [GUIDANCE, g.op("Sub", [v_text, v_none])])])
            x = g.op("Add", [x, g.op("Mul", [guided, g.const(f"{prefix}{i}/dt", np.float32(1 / n))])],
                     out=f"{prefix}{i}/x")
        final = g.op("Add", [g.op("Mul", [MASK, x]), g.op("Mul", [inverse, INIT_IMAGE])])
        return final

    def clip(x: str, out: str) -> str:
        return g.op("Clip", [x, lo, hi], out=out)

    fast64 = clip(chain("fast", fast_steps), f"{FAST_PREFIX}64")
    up = g.inline(comps["up256"], "fast_up256", {"image": fast64})["upsampled"]
    clip(up, f"{FAST_PREFIX}256")
    image = {64: clip(chain("step", steps), image_output(64))}
    image[256] = clip(g.inline(comps["up256"], "up256", {"image": image[64]})["upsampled"], image_output(256))
    pooled = g.op("Slice", [text["pooled"], g.const("pipe/s0", np.array([0], np.int64)),
                            g.const("pipe/s1", np.array([1], np.int64))])
    refined = {256: clip(g.inline(comps["refiner"], "refiner", {"image": image[64], "pooled": pooled})
                         ["upsampled"], image_output(256, True))}
    for res in RESOLUTIONS[2:]:
        for chain_out, is_refined in ((image, False), (refined, True)):
            name = f"{'r' if is_refined else ''}up{res}"
            up = g.inline(comps["up2x"], name, {"image": chain_out[res // 2]})["upsampled"]
            chain_out[res] = clip(up, image_output(res, is_refined))

    inputs = [
        helper.make_tensor_value_info(TOKENS, TensorProto.INT64, [1, MAX_TOKENS]),
        helper.make_tensor_value_info(NOISE, TensorProto.FLOAT, [1, 3, BASE, BASE]),
        helper.make_tensor_value_info(INIT_IMAGE, TensorProto.FLOAT, [1, 3, BASE, BASE]),
        helper.make_tensor_value_info(MASK, TensorProto.FLOAT, [1, 1, BASE, BASE]),
        helper.make_tensor_value_info(STRENGTH, TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info(GUIDANCE, TensorProto.FLOAT, [1]),
    ]
    names = [f"{FAST_PREFIX}64", f"{FAST_PREFIX}256"] + [image_output(r) for r in RESOLUTIONS] + [
        image_output(r, True) for r in RESOLUTIONS[1:]]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, _side(n), _side(n)]) for n in names]
    weights = list(g.initializers.values())
    graph = helper.make_graph(g.nodes, "tierflow-text-to-image", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.doc_string = "tierflow text-to-image: flow matching at 64 px, upsamplers to 2048 px, cloud refiner"
    md.write_metadata(
        model,
        kind=ModelKind.IMAGE_GENERATOR,
        resolutions=list(RESOLUTIONS),
        refiner_output=image_output(256, True),
        blocks=[f"step{i}/x" for i in range(steps)] + [image_output(r) for r in RESOLUTIONS],
        config=config(comps, steps, fast_steps),
    )
    return model


def build(path: Path) -> None:
    """The bundled ``demo-image``: the pipeline of the committed components, written to ``path``."""
    onnx.save(assemble(), str(path))


def config(comps: Mapping[str, Component], steps: int, fast_steps: int) -> dict[str, object]:
    """What the runtime reads from ``tierflow.config``: steps, default guidance, parameter counts."""
    den = md.props(comps["denoiser"].model).get(md.CONFIG)
    guidance = float(json.loads(den).get("guidance", 3.0)) if den else 3.0
    return {
        "pipeline": "text-to-image",
        "steps": steps,
        "fast_steps": fast_steps,
        "guidance": guidance,
        "base_resolution": BASE,
        "parameters": {n: parameters(c.model) for n, c in comps.items()},
        "groups": {"base": list(BASE_COMPONENTS), "edge_layers": list(EDGE_COMPONENTS),
                   "cloud_layers": list(CLOUD_COMPONENTS)},
    }


def parameters(model: onnx.ModelProto) -> int:
    """Weight elements of float initializers (shape constants and the like excluded)."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats))


def _side(name: str) -> int:
    return int(name.rsplit("_", 1)[1])
