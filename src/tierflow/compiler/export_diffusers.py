"""Export a diffusers Stable-Diffusion pipeline to tierflow's component form (extra ``export``).

``export_diffusers(source, out_dir)`` reads a pipeline folder (``model_index.json``, ``text_encoder/``,
``tokenizer/``, ``unet/``, ``vae/``, ``scheduler/``: what ``StableDiffusionPipeline.save_pretrained``
writes), exports the text encoder, the UNet and the VAE decoder to ONNX with torch's TorchScript
exporter (``dynamo=False``: it traces these models in a second each, with dynamic batch and latent
sizes), writes the CLIP tokenizer's ``vocab.json`` / ``merges.txt`` and ``pipeline.json``
(:class:`tierflow.runtime.diffusion.Manifest`), and then checks the folder: diffusers' own pipeline
and :class:`tierflow.runtime.diffusion.DiffusionPipeline` paint the same prompt from the same initial
latents with the same steps and guidance, and the images may differ by at most ``tolerance`` (pixels
in [0, 1]). Only a checked folder is renamed into place.

torch, transformers and diffusers are imported inside functions, so tierflow imports without them; a
missing one raises :class:`MissingExtraError`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.compiler.export_hf import Stage, _one_line, _quiet, require_modules
from tierflow.errors import (
    ExportError,
    InvalidModelError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from tierflow.runtime import diffusion as dm
from tierflow.runtime.session import SessionOptions

MODEL_INDEX = "model_index.json"
# The components a Stable-Diffusion pipeline folder must have, with the classes tierflow exports.
REQUIRED: dict[str, tuple[str, ...]] = {
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "scheduler": dm.SCHEDULERS,
}
# diffusers' StableDiffusionPipeline.__call__ defaults, recorded as the runtime's defaults.
DEFAULT_STEPS, DEFAULT_GUIDANCE = 50, 7.5
# Prompts whose token ids the exported tokenizer must give exactly as transformers does.
_TOKENIZER_PROBES = ("", "A Photo of 2 CATS, isn't it?!", "naïve café, 3.5 ☕ -- <|endoftext|>")
_PROTOBUF_LIMIT = 2_000_000_000  # bytes one .onnx file can hold


@dataclass(frozen=True)
class DiffusersExportOptions:
    """How to export and check. The check paints ``prompt`` in ``steps`` steps at ``guidance``
    (``resolution`` px, None: the model's default) from the noise of ``seed``."""

    opset: int = 18
    threads: int = 0  # torch and ONNX Runtime intra-op threads (0 = auto)
    prompt: str = "a photograph of an astronaut riding a horse"
    steps: int = 4
    guidance: float = 7.5
    seed: int = 0
    resolution: int | None = None
    # Allowed max |pixel diff| in [0, 1]: 2.5 grey levels of 255. The tiny test pipeline measures
    # about 1e-6; the ONNX and torch kernels differ in float32 rounding, which many steps can grow.
    tolerance: float = 1e-2
    external_data: bool | None = None  # None: weights to <name>.onnx.data only past 2 GB


@dataclass(frozen=True)
class Component:
    name: str
    path: Path
    data_path: Path | None  # external weights, when used
    size_bytes: int
    parameters: int


@dataclass(frozen=True)
class DiffusersExportResult:
    path: Path  # the output folder
    manifest: Path
    source: str
    pipeline_class: str
    scheduler: str
    components: tuple[Component, ...]
    size_bytes: int  # every file written
    resolution: int  # the default (and checked) resolution
    max_length: int
    steps: int  # of the check
    guidance: float
    max_abs_diff: float  # diffusers vs the exported form, pixels in [0, 1]
    tolerance: float
    seconds: float


# --- the folder ---------------------------------------------------------------------------------


def is_diffusers_pipeline(source: str | Path) -> bool:
    """Whether ``source`` is a folder with a diffusers ``model_index.json``."""
    path = Path(str(source)).expanduser()
    return path.is_dir() and (path / MODEL_INDEX).is_file()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{what} {path} is not readable JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidModelError(f"{what} {path} is not a JSON object")
    return doc


def read_pipeline(source: str | Path) -> tuple[Path, dict[str, Any], str, dict[str, Any]]:
    """Check a pipeline folder without torch: (folder, model_index, scheduler class, scheduler config).
    Raises a one-line tierflow error for a folder that is not a Stable-Diffusion pipeline tierflow can
    export."""
    folder = Path(str(source)).expanduser()
    if not folder.exists():
        raise ModelNotFoundError(f"no such pipeline folder: {source}")
    if not folder.is_dir():
        raise InvalidModelError(f"{source} is a file; give a diffusers pipeline folder (model_index.json)")
    if not (folder / MODEL_INDEX).is_file():
        raise InvalidModelError(f"{source} has no {MODEL_INDEX}: not a diffusers pipeline folder")
    index = _read_json(folder / MODEL_INDEX, "the pipeline index")
    need = ", ".join(REQUIRED)
    for name, classes in REQUIRED.items():
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise InvalidModelError(f"{source} has no {name} in {MODEL_INDEX}; a Stable-Diffusion pipeline "
                                    f"needs {need}")
        if not (folder / name).is_dir():
            raise InvalidModelError(f"{source} is incomplete: its {name}/ folder is missing")
        if name != "scheduler" and entry[1] not in classes:
            raise UnsupportedModelError(
                f"{source}: {name} is a {entry[1]}; tierflow exports {' or '.join(classes)}"
            )
    extra = sorted(k for k, v in index.items() if not k.startswith("_") and k not in REQUIRED
                   and isinstance(v, list) and len(v) == 2 and v[1] is not None
                   and k not in ("safety_checker", "feature_extractor", "image_encoder"))
    if extra:
        raise UnsupportedModelError(
            f"{source} is a {index.get('_class_name', 'pipeline')} with {', '.join(extra)}; tierflow exports "
            "Stable-Diffusion pipelines of one text encoder, a UNet and a VAE"
        )
    config_path = folder / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        raise InvalidModelError(f"{source} is incomplete: scheduler/scheduler_config.json is missing")
    config = _read_json(config_path, "the scheduler config")
    name = str(config.get("_class_name") or index["scheduler"][1])
    dm.check_scheduler(name, config)
    return folder.resolve(), index, name, config


def _check_output(output: Path) -> None:
    if not output.parent.is_dir():
        raise ExportError(f"output folder {output.parent} does not exist")
    if output.exists() and not output.is_dir():
        raise ExportError(f"output {output} is a file; give a folder for the exported pipeline")
    if output.is_dir() and any(output.iterdir()) and not (output / dm.MANIFEST).is_file():
        raise ExportError(
            f"output {output} is a folder that is not empty and holds no exported pipeline; give a new folder"
        )


# --- the optional extra -----------------------------------------------------------------------------


def _require_extra() -> Any:
    """Import torch (and check transformers and diffusers), or say how to install them."""
    require_modules(("torch", "transformers", "diffusers"), "exporting a diffusers pipeline")
    import torch

    return torch


@contextlib.contextmanager
def _quiet_all() -> Iterator[None]:
    """:func:`export_hf._quiet` plus diffusers' own log lines and progress bars."""
    dl: Any = importlib.import_module("diffusers.utils.logging")  # untyped module
    level, bars = dl.get_verbosity(), dl.is_progress_bar_enabled()
    dl.set_verbosity_error()
    dl.disable_progress_bar()
    try:
        with _quiet():
            yield
    finally:
        dl.set_verbosity(level)
        if bars:
            dl.enable_progress_bar()


# --- loading --------------------------------------------------------------------------------------


@dataclass
class _Parts:
    text_encoder: Any
    tokenizer: Any
    unet: Any
    vae: Any
    scheduler: Any


def _load(folder: Path, label: str, scheduler_name: str) -> _Parts:
    torch = _require_extra()
    with _quiet_all():  # untyped modules
        diffusers: Any = importlib.import_module("diffusers")
        transformers: Any = importlib.import_module("transformers")

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"

    def load(name: str, make: Any) -> Any:
        try:
            with _quiet_all():
                return make()
        except Exception as exc:
            raise InvalidModelError(f"cannot load the {name} of {label}: {_one_line(exc)}") from exc

    f32 = torch.float32
    return _Parts(
        text_encoder=load("text_encoder", lambda: transformers.CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", local_files_only=True, **{dtype_kw: f32}).eval()),
        tokenizer=load("tokenizer", lambda: transformers.AutoTokenizer.from_pretrained(
            folder, subfolder="tokenizer", local_files_only=True)),
        unet=load("unet", lambda: diffusers.UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", local_files_only=True, torch_dtype=f32).eval()),
        vae=load("vae", lambda: diffusers.AutoencoderKL.from_pretrained(
            folder, subfolder="vae", local_files_only=True, torch_dtype=f32).eval()),
        scheduler=load("scheduler", lambda: getattr(diffusers, scheduler_name).from_pretrained(
            folder, subfolder="scheduler", local_files_only=True)),
    )


def _side(value: Any, what: str) -> int:
    """A square size from a config value (an int, or a pair of equal ints)."""
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or value <= 0:
        raise UnsupportedModelError(f"{what} is {value!r}; tierflow exports square pipelines")
    return value


def _check_parts(parts: _Parts, label: str) -> None:
    unet, vae = parts.unet.config, parts.vae.config
    if unet.in_channels != vae.latent_channels:
        raise UnsupportedModelError(
            f"{label}: the UNet takes {unet.in_channels} channels and the VAE makes {vae.latent_channels} "
            "(an inpainting or image-conditioned UNet); tierflow exports text-to-image pipelines"
        )
    for key in ("time_cond_proj_dim", "addition_embed_type", "class_embed_type", "encoder_hid_dim_type"):
        if getattr(unet, key, None) is not None:
            raise UnsupportedModelError(f"{label}: a UNet with {key}={getattr(unet, key)!r} is not supported")


# --- the tokenizer ------------------------------------------------------------------------------------


def _write_tokenizer(tokenizer: Any, folder: Path) -> dict[str, str]:
    """CLIP's vocab.json + merges.txt into ``folder`` (from the loaded tokenizer, which transformers 5
    saves as tokenizer.json only); the manifest's tokenizer entry."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedModelError(f"the tokenizer is a {type(tokenizer).__name__} without a fast backend")
    doc = json.loads(backend.to_str())
    model = doc.get("model") or {}
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise UnsupportedModelError("the tokenizer is not CLIP's byte-level BPE (with </w> word ends)")
    vocab: dict[str, int] = dict(model["vocab"])
    for added in doc.get("added_tokens") or []:
        vocab.setdefault(str(added["content"]), int(added["id"]))
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model.get("merges") or []]
    specials = {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "pad": tokenizer.pad_token,
                "unk": tokenizer.unk_token}
    for key in ("bos", "eos", "pad"):
        if specials[key] is None or specials[key] not in vocab:
            raise UnsupportedModelError(f"the tokenizer has no {key} token in its vocabulary")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    entry = {"vocab": f"{folder.name}/vocab.json", "merges": f"{folder.name}/merges.txt"}
    entry.update({k: str(v) for k, v in specials.items() if v is not None})
    return entry


def _max_length(tokenizer: Any, text_encoder: Any) -> int:
    positions = int(text_encoder.config.max_position_embeddings)
    length = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if not 2 <= length <= 1_000_000:  # unset (transformers' 1e30): the text encoder's own length
        length = positions
    if length > positions:
        raise InvalidModelError(
            f"the tokenizer pads to {length} tokens but the text encoder has {positions} positions"
        )
    return length


# --- ONNX export ------------------------------------------------------------------------------------


def _wrappers(parts: _Parts) -> dict[str, Any]:
    """torch modules with the plain tensor signatures of :data:`tierflow.runtime.diffusion.COMPONENTS`."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.text_encoder

        def forward(self, input_ids: Any) -> Any:
            return self.model(input_ids=input_ids, return_dict=True).last_hidden_state

    class UNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.unet

        def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
            out = self.model(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)
            return out[0]

    class VaeDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.vae

        def forward(self, latents: Any) -> Any:
            return self.model.decode(latents, return_dict=False)[0]

    return {"text_encoder": TextEncoder().eval(), "unet": UNet().eval(), "vae_decoder": VaeDecoder().eval()}


def _parameters(parts: _Parts) -> dict[str, int]:
    def count(*modules: Any) -> int:
        return sum(int(p.numel()) for m in modules if m is not None for p in m.parameters())

    vae = parts.vae
    return {
        "text_encoder": count(parts.text_encoder),
        "unet": count(parts.unet),
        "vae_decoder": count(vae.decoder, getattr(vae, "post_quant_conv", None)),
    }


def _export_one(
    name: str, module: Any, args: tuple[Any, ...], dynamic: dict[str, dict[int, str]], work: Path,
    dest: Path, options: DiffusersExportOptions,
) -> Path | None:
    """Trace ``module`` to ``dest/<name>.onnx``; returns the external weights file, when used."""
    import onnx
    import torch

    inputs, outputs = dm.COMPONENTS[name]
    traced = work / name / f"{name}.onnx"
    traced.parent.mkdir(parents=True)
    try:
        with _quiet_all(), torch.no_grad():
            torch.onnx.export(
                module, args, str(traced), input_names=list(inputs), output_names=list(outputs),
                dynamic_axes=dynamic, opset_version=options.opset, dynamo=False, do_constant_folding=True,
            )
    except Exception as exc:
        raise ExportError(f"the {name} could not be exported to ONNX: {_one_line(exc)}") from exc
    spilled = len(list(traced.parent.iterdir())) > 1  # the exporter wrote weights beside it (past 2 GB)
    target = dest / f"{name}.onnx"
    external = options.external_data if options.external_data is not None else spilled
    if not external and not spilled:
        os.replace(traced, target)
        return None
    model = onnx.load(str(traced))  # with the weights beside it
    data_name = f"{name}.onnx.data"
    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        os.chmod(dest / data_name, target.stat().st_mode & 0o777)  # onnx writes it owner-only
        return dest / data_name
    onnx.save_model(model, str(target))
    return None


def _export_all(parts: _Parts, staged: Path, work: Path, max_length: int, stage: Stage,
                options: DiffusersExportOptions) -> dict[str, Path | None]:
    import torch

    wrappers = _wrappers(parts)
    sample = _side(parts.unet.config.sample_size, "the UNet's sample_size")
    channels = int(parts.unet.config.in_channels)
    width = int(parts.text_encoder.config.hidden_size)
    vocab = int(parts.text_encoder.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    grid = {0: "batch", 2: "height", 3: "width"}
    trace = {
        "text_encoder": (
            (torch.randint(0, vocab, (2, max_length), generator=gen),),
            {dm.INPUT_IDS: {0: "batch"}, dm.LAST_HIDDEN_STATE: {0: "batch"}},
        ),
        "unet": (
            (torch.randn(2, channels, sample, sample, generator=gen), torch.tensor([500.0, 500.0]),
             torch.randn(2, max_length, width, generator=gen)),
            {dm.SAMPLE: grid, dm.TIMESTEP: {0: "batch"},
             dm.ENCODER_HIDDEN_STATES: {0: "batch", 1: "sequence"}, dm.NOISE_PRED: grid},
        ),
        "vae_decoder": (
            (torch.randn(1, channels, sample, sample, generator=gen),),
            {dm.LATENTS: grid, dm.IMAGE: grid},
        ),
    }
    data: dict[str, Path | None] = {}
    for name, (args, dynamic) in trace.items():
        stage(f"exporting the {name.replace('_', ' ')} to ONNX")
        data[name] = _export_one(name, wrappers[name], args, dynamic, work, staged, options)
    return data


# --- the check ---------------------------------------------------------------------------------------


def _verify(staged: Path, parts: _Parts, options: DiffusersExportOptions, resolution: int) -> float:
    """Paint the same picture with diffusers and with the exported folder; max |pixel diff| in [0, 1]."""
    import torch

    with _quiet_all():  # diffusers imports its pipelines lazily, and transformers warns on the way
        diffusers: Any = importlib.import_module("diffusers")  # untyped module
        pipeline_class = diffusers.StableDiffusionPipeline

    runtime = dm.DiffusionPipeline.open(staged, SessionOptions(intra_op_threads=options.threads))
    length = runtime.manifest.max_length
    for text in (options.prompt, *_TOKENIZER_PROBES):
        ref = list(parts.tokenizer(text, padding="max_length", max_length=length, truncation=True).input_ids)
        got = runtime.tokenizer.encode(text).ids.tolist()
        if ref != got:
            raise UnsupportedModelError(
                f"the tokenizer does not behave like CLIP's: {text!r} gives {got[:8]}... here, "
                f"{ref[:8]}... in transformers"
            )
    noise = runtime.noise(options.seed, resolution)
    pipe = pipeline_class(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=parts.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    try:
        with _quiet_all(), torch.no_grad():
            ref_image = pipe(
                options.prompt, height=resolution, width=resolution, num_inference_steps=options.steps,
                guidance_scale=options.guidance, latents=torch.from_numpy(noise.copy()), output_type="np",
            ).images[0]
    except Exception as exc:
        raise ExportError(f"diffusers could not run the pipeline for the check: {_one_line(exc)}") from exc
    image = runtime.render(options.prompt, noise, steps=options.steps, guidance=options.guidance)
    ours = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
    if ours.shape != ref_image.shape:
        raise ExportError(f"the exported pipeline paints {ours.shape}, diffusers {ref_image.shape}")
    return float(np.max(np.abs(ours - np.asarray(ref_image, np.float32))))


# --- export -------------------------------------------------------------------------------------------


def _move_into_place(staged: Path, output: Path, staging: Path) -> None:
    """Swap the checked folder in; a previous export at ``output`` goes (checked by _check_output)."""
    if output.exists():
        os.replace(output, staging / "previous")
    os.replace(staged, output)


def export_diffusers(
    source: str | Path,
    out_dir: str | Path,
    options: DiffusersExportOptions | None = None,
    on_stage: Stage | None = None,
) -> DiffusersExportResult:
    """Export the diffusers pipeline at ``source`` into the folder ``out_dir`` (see the module docstring)."""
    options = options or DiffusersExportOptions()
    stage = on_stage or (lambda _msg: None)
    start = time.perf_counter()
    output = Path(out_dir).expanduser()
    label = str(source)
    stage(f"reading {label}")
    folder, index, scheduler_name, _ = read_pipeline(source)
    _check_output(output)
    if options.steps < 1:
        raise ExportError(f"the check needs at least one step, not {options.steps}")

    stage(f"loading {label}")
    torch = _require_extra()
    if options.threads:
        torch.set_num_threads(options.threads)
    parts = _load(folder, label, scheduler_name)
    _check_parts(parts, label)
    scheduler_config = {k: v for k, v in dict(parts.scheduler.config).items() if not k.startswith("_")}
    dm.check_scheduler(scheduler_name, scheduler_config)
    max_length = _max_length(parts.tokenizer, parts.text_encoder)
    sample = _side(parts.unet.config.sample_size, "the UNet's sample_size")

    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = staging / "pipeline"
        staged.mkdir()
        tokenizer_entry = _write_tokenizer(parts.tokenizer, staged / "tokenizer")
        data = _export_all(parts, staged, staging / "trace", max_length, stage, options)
        manifest = dm.Manifest(
            latent_channels=int(parts.unet.config.in_channels),
            vae_scale_factor=2 ** (len(parts.vae.config.block_out_channels) - 1),
            unet_scale_factor=2 ** (len(parts.unet.config.down_block_types) - 1),
            vae_scaling_factor=float(parts.vae.config.scaling_factor),
            sample_size=sample, max_length=max_length, scheduler=scheduler_name,
            scheduler_config=scheduler_config, tokenizer=tokenizer_entry, default_steps=DEFAULT_STEPS,
            default_guidance=DEFAULT_GUIDANCE, source=str(folder),
        )
        manifest_path = staged / dm.MANIFEST
        manifest_path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
        resolution = options.resolution or manifest.default_resolution
        stage(f"checking against diffusers ({options.steps} steps at {resolution} px)")
        diff = _verify(staged, parts, options, resolution)
        if not diff <= options.tolerance:  # also catches NaN
            raise ExportError(
                f"the exported pipeline disagrees with diffusers: max |pixel diff| {diff:.3g} > "
                f"{options.tolerance:.3g} (pixels in [0, 1], {options.steps} steps); nothing written"
            )
        check = {"max_abs_diff": diff, "tolerance": options.tolerance, "steps": options.steps,
                 "guidance": options.guidance, "resolution": resolution, "prompt": options.prompt,
                 "seed": options.seed}
        manifest_path.write_text(
            json.dumps({**manifest.to_json(), "verification": check}, indent=2) + "\n", encoding="utf-8"
        )
        _move_into_place(staged, output, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    params = _parameters(parts)
    components = []
    for name in dm.COMPONENTS:
        path = output / f"{name}.onnx"
        spilled = data[name]
        data_path = output / spilled.name if spilled is not None else None
        size = path.stat().st_size + (data_path.stat().st_size if data_path else 0)
        components.append(Component(name, path, data_path, size, params[name]))
    total = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return DiffusersExportResult(
        path=output, manifest=output / dm.MANIFEST, source=str(folder),
        pipeline_class=str(index.get("_class_name", "")), scheduler=scheduler_name,
        components=tuple(components), size_bytes=total, resolution=resolution, max_length=max_length,
        steps=options.steps, guidance=options.guidance, max_abs_diff=diff, tolerance=options.tolerance,
        seconds=time.perf_counter() - start,
    )


def describe(result: DiffusersExportResult) -> dict[str, Any]:
    """``result`` as JSON-ready values."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in asdict(result).items()}
