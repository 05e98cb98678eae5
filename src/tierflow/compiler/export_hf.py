"""Export a Hugging Face causal LM to tierflow's ONNX LM form (extra ``export``).

``export_hf(source, output)`` loads a decoder-only model from a local directory
(``config.json`` + weights) or from a hub id already in the local Hugging Face
cache (nothing is downloaded), traces it with the dynamo exporter
(``torch.export`` + ``torch.onnx``) behind a wrapper that takes and returns the
KV cache as flat per-layer tensors (:mod:`tierflow.model.lm_contract`), checks
ONNX Runtime against PyTorch on a prefill and a decode step, and only then
moves the file into place.

torch, transformers and onnxscript are imported inside functions, so tierflow
imports without them; a missing one raises :class:`MissingExtraError`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.errors import ExportError, MissingExtraError, ModelNotFoundError, TokenizerError
from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.types.models import ModelKind

INSTALL_HINT = "pip install torch==2.13.0 && pip install 'tierflow[export]'"

# Sample sizes for tracing: >= 2 (torch.export specializes 0 and 1) and all different,
# so no two dynamic dimensions are mistaken for one another.
_TRACE_BATCH, _TRACE_SEQ, _TRACE_PAST = 2, 4, 5
# Verification: a prefill from an empty cache, then one decode step on its presents.
_VERIFY_PROMPT = 8
_PROTOBUF_LIMIT = 2_000_000_000  # bytes of weights a single .onnx file can hold (protobuf's 2 GB cap)

Stage = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``external_data=None`` moves weights to ``<output>.data`` only past 2 GB."""

    opset: int = 18
    max_seq_len: int | None = None  # None: the config's max_position_embeddings
    include_tokenizer: bool = True
    external_data: bool | None = None
    tolerance: float = 1e-3  # allowed max |logits diff|, times max(1, max |logits|)
    threads: int = 0  # ONNX Runtime intra-op threads for the check (0 = auto)
    optimize: bool = True  # run onnxscript's graph optimizer


@dataclass(frozen=True)
class ExportResult:
    path: Path
    data_path: Path | None  # external weights file, when used
    size_bytes: int  # the .onnx file plus its external data
    source: str
    model_type: str
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int | None
    tokenizer: bool
    max_abs_diff: float  # ONNX Runtime vs PyTorch logits, over the prefill and decode checks
    allowed_diff: float
    seconds: float


# --- the optional extra ------------------------------------------------------


def require_modules(names: tuple[str, ...], what: str) -> None:
    """A MissingExtraError naming those of ``names`` (modules of the 'export' extra) that ``what``
    needs and cannot import, with how to install them."""
    missing = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"{what} needs {', '.join(missing)} (the 'export' extra); install it: {INSTALL_HINT}"
        )


def _require_extra() -> tuple[Any, Any]:
    """Import torch and transformers (and check onnxscript), or say how to install them."""
    require_modules(("torch", "transformers", "onnxscript"), "tierflow export")
    import torch
    import transformers

    return torch, transformers


# --- finding the model ---------------------------------------------------------


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that does not exist is a missing path."""
    return source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1


def resolve_source(source: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A model directory, or a hub id's snapshot in the local Hugging Face cache (never downloaded)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{text} is a file; give a Hugging Face model directory (config.json, weights)")
        if not (path / "config.json").is_file():
            raise ExportError(f"{text} has no config.json: not a Hugging Face model directory")
        return path.resolve()
    if isinstance(source, Path) or _looks_like_path(text) or not text.strip():
        raise ModelNotFoundError(f"no such model directory: {text}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise MissingExtraError(
            f"{text} is not a directory; reading hub ids from the local cache needs the 'export' extra: "
            f"{INSTALL_HINT}"
        ) from exc
    try:
        snapshot = Path(
            snapshot_download(text, local_files_only=True, cache_dir=str(cache_dir) if cache_dir else None)
        )
    except Exception as exc:  # not cached, or not a valid repo id
        raise ModelNotFoundError(
            f"{text} is neither a directory nor a model in the local Hugging Face cache "
            "(tierflow export never downloads; fetch it first, e.g. with `hf download`)"
        ) from exc
    if not (snapshot / "config.json").is_file():
        raise ExportError(f"the cached snapshot of {text} has no config.json")
    return snapshot


def _causal_check(config: Any, label: str) -> None:
    """Refuse configs that are not decoder-only LMs with a language-model head."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = str(getattr(config, "model_type", "") or "unknown")
    hint = "tierflow exports decoder-only causal LMs (GPT-2, Llama, Qwen2, Mistral, ...)"
    if getattr(config, "is_encoder_decoder", False):
        raise ExportError(f"{label} is an encoder-decoder model ({model_type}); {hint}")
    causal = set()
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal.update([names] if isinstance(names, str) else names)
    archs = list(getattr(config, "architectures", None) or [])
    if archs:
        if not any(a in causal for a in archs):
            raise ExportError(
                f"{label} is a {'/'.join(archs)} ({model_type}), not a causal language model; {hint}"
            )
        return
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ExportError(f"{label} has model type {model_type}, which has no causal-LM class; {hint}")
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        raise ExportError(f"{label} is an encoder ({model_type}) without is_decoder=true; {hint}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings and log lines torch/transformers print while tracing."""
    hf_logging: Any = importlib.import_module("transformers.utils.logging")  # untyped module
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    hf_level, hf_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would garble the CLI's spinner
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        hf_logging.set_verbosity(hf_level)
        if hf_bars:
            hf_logging.enable_progress_bar()


def _one_line(exc: BaseException) -> str:
    """The root cause's first line, without ANSI colour codes."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [ln.strip() for ln in str(root).replace("\x1b[96m", "").replace("\x1b[0m", "").splitlines()]
    text = next((ln for ln in lines if ln), "")
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _load_model(directory: Path, label: str) -> Any:
    torch, transformers = _require_extra()
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with _quiet():
            config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as exc:
        raise ExportError(f"cannot read the config of {label}: {_one_line(exc)}") from exc
    _causal_check(config, label)
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # fp32: the contract's KV type
    model: Any
    try:
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(
                directory, local_files_only=True, **{dtype_kw: torch.float32}
            )
    except Exception as exc:
        raise ExportError(f"cannot load {label}: {_one_line(exc)}") from exc
    return model.eval()


# --- the flat-tensor wrapper ----------------------------------------------------


def _make_wrapper(model: Any) -> Any:
    """A module taking (input_ids, attention_mask, [position_ids], past k/v per layer) and
    returning (logits, present k/v per layer) -- the contract's flat form of HF's cache object."""
    import torch
    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5 renamed it
    with_positions = "position_ids" in params

    def make_cache(pairs: list[tuple[Any, Any]]) -> Any:
        # Without a config every layer is a full DynamicLayer: sliding-window layers keep their whole
        # past, and the attention mask still applies the window.
        if hasattr(DynamicCache, "from_legacy_cache") and "ddp_cache_data" not in inspect.signature(
            DynamicCache.__init__
        ).parameters:
            return DynamicCache.from_legacy_cache(tuple(pairs))
        return DynamicCache(pairs)

    def flatten(cache: Any) -> list[Any]:
        if hasattr(cache, "layers"):
            return [t for layer in cache.layers for t in (layer.keys, layer.values)]
        if hasattr(cache, "key_cache"):
            return [t for kv in zip(cache.key_cache, cache.value_cache, strict=True) for t in kv]
        return [t for kv in cache for t in kv[:2]]

    class FlatKV(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.with_positions = with_positions

        def forward(self, input_ids: Any, attention_mask: Any, *rest: Any) -> tuple[Any, ...]:
            position_ids, past = (rest[0], rest[1:]) if with_positions else (None, rest)
            pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
            kwargs: dict[str, Any] = {cache_kw: make_cache(pairs), "use_cache": True}
            if with_positions:
                kwargs["position_ids"] = position_ids
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            present = getattr(out, "cache", None)
            if present is None:
                present = out.past_key_values
            return (out.logits, *flatten(present))

    return FlatKV().eval()


@dataclass(frozen=True)
class _Shape:
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int


def _probe(wrapper: Any) -> _Shape:
    """Run two tokens through the model to learn its cache layout and vocabulary."""
    import torch

    ids = torch.zeros((1, 2), dtype=torch.long)
    mask = torch.ones((1, 2), dtype=torch.long)
    args = [ids, mask] + ([torch.arange(2).unsqueeze(0)] if wrapper.with_positions else [])
    with torch.no_grad():
        out = wrapper(*args)
    presents = out[1:]
    if not presents or len(presents) % 2:
        raise ExportError("the model returned no key/value cache; it cannot be driven step by step")
    k = presents[0]
    if k.dim() != 4:
        raise ExportError(f"the model's cache tensors are {k.dim()}-D; tierflow needs [batch, heads, seq, d]")
    return _Shape(len(presents) // 2, int(k.shape[1]), int(k.shape[3]), int(out[0].shape[-1]))


def _feeds(
    ids: np.ndarray, past: list[np.ndarray], shape: _Shape, with_positions: bool
) -> dict[str, np.ndarray]:
    """Contract inputs for ``ids`` after ``past`` (all ones mask, positions past..past+seq-1)."""
    batch, seq = ids.shape
    past_len = past[0].shape[2] if past else 0
    feeds = {lc.INPUT_IDS: ids, lc.ATTENTION_MASK: np.ones((batch, past_len + seq), np.int64)}
    if with_positions:
        feeds[lc.POSITION_IDS] = np.tile(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, 1))
    for i in range(shape.num_layers):
        feeds[lc.past_name(i, "key")] = past[2 * i]
        feeds[lc.past_name(i, "value")] = past[2 * i + 1]
    return feeds


def _random_past(shape: _Shape, batch: int, length: int, rng: np.random.Generator) -> list[np.ndarray]:
    dims = (batch, shape.kv_heads, length, shape.head_dim)
    return [rng.standard_normal(dims).astype(np.float32) for _ in range(2 * shape.num_layers)]


def _torch_run(wrapper: Any, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        outs = wrapper(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names])
    return [o.detach().numpy() for o in outs]


# --- export ----------------------------------------------------------------------


def _io_names(shape: _Shape, with_positions: bool) -> tuple[list[str], list[str]]:
    inputs = [lc.INPUT_IDS, lc.ATTENTION_MASK] + ([lc.POSITION_IDS] if with_positions else [])
    outputs = [lc.LOGITS]
    for i in range(shape.num_layers):
        inputs += [lc.past_name(i, "key"), lc.past_name(i, "value")]
        outputs += [lc.present_name(i, "key"), lc.present_name(i, "value")]
    return inputs, outputs


def _trace(wrapper: Any, shape: _Shape, options: ExportOptions) -> Any:
    """torch.export with dynamic batch/seq/past, then torch.onnx -> an ``ONNXProgram``."""
    import torch
    from torch.export import Dim

    rng = np.random.default_rng(0)
    ids = rng.integers(0, shape.vocab_size, (_TRACE_BATCH, _TRACE_SEQ), dtype=np.int64)
    feeds = _feeds(ids, _random_past(shape, _TRACE_BATCH, _TRACE_PAST, rng), shape, wrapper.with_positions)
    in_names, out_names = _io_names(shape, wrapper.with_positions)
    args = tuple(torch.from_numpy(feeds[n]) for n in in_names)
    batch, seq, past = Dim("batch"), Dim("seq"), Dim("past")
    # The mask spans past + seq; a derived Dim cannot be a sum of two Dims, so let torch infer it.
    rest: list[dict[int, Any]] = [{0: batch, 1: seq}] if wrapper.with_positions else []
    rest += [{0: batch, 2: past}] * (2 * shape.num_layers)
    specs = ({0: batch, 1: seq}, {0: batch, 1: Dim.DYNAMIC}, tuple(rest))  # forward(ids, mask, *rest)
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(wrapper, args, dynamic_shapes=specs, strict=False)
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                input_names=in_names,
                output_names=out_names,
                opset_version=options.opset,
                optimize=options.optimize,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"the model could not be traced to ONNX: {_one_line(exc)}") from exc
    return onnx_program


def _tokenizer_json(directory: Path) -> str | None:
    """The directory's fast tokenizer as a ``tokenizers`` JSON document, if it has one."""
    from tokenizers import Tokenizer as HFTokenizer

    file = directory / "tokenizer.json"
    if file.is_file():
        text = file.read_text(encoding="utf-8")
        try:
            HFTokenizer.from_str(text)
        except Exception as exc:
            raise TokenizerError(f"{file} is not a valid tokenizers document: {_one_line(exc)}") from exc
        return text
    try:  # a slow tokenizer that transformers can convert (needs sentencepiece for most)
        from transformers import AutoTokenizer

        with _quiet():
            tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        backend = getattr(tok, "backend_tokenizer", None)
        return str(backend.to_str()) if backend is not None else None
    except Exception:
        return None


def _max_seq_len(config: Any, override: int | None) -> int | None:
    if override is not None:
        if override < 2:
            raise ExportError(f"--max-seq-len must be >= 2, got {override}")
        return override
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _initializer_bytes(onnx_program: Any) -> int:
    return sum(int(v.const_value.nbytes) for v in onnx_program.model.graph.initializers.values()
               if v.const_value is not None)


def _verify(path: Path, wrapper: Any, shape: _Shape, options: ExportOptions) -> tuple[float, float]:
    """Prefill from an empty cache, then one decode step, on ONNX Runtime and on torch.
    Returns (max |logits diff|, allowed diff); raises ExportError when they disagree."""
    from tierflow.runtime.session import SessionOptions, input_specs, open_session, output_specs

    session = open_session(path, SessionOptions(intra_op_threads=options.threads))
    lc.LMSignature.from_specs(input_specs(session), output_specs(session))  # the contract holds
    in_names, out_names = _io_names(shape, wrapper.with_positions)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, shape.vocab_size, (1, _VERIFY_PROMPT), dtype=np.int64)
    past = _random_past(shape, 1, 0, rng)
    worst, scale = 0.0, 1.0
    for step in ("prefill", "decode"):
        feeds = _feeds(ids, past, shape, wrapper.with_positions)
        got = session.run(out_names, feeds)
        ref = _torch_run(wrapper, feeds, in_names)
        if got[0].shape != ref[0].shape:
            raise ExportError(f"{step}: ONNX logits have shape {got[0].shape}, PyTorch {ref[0].shape}")
        worst = max(worst, float(np.max(np.abs(got[0] - ref[0]))))
        scale = max(scale, float(np.max(np.abs(ref[0]))))
        past = ref[1:]
        ids = np.argmax(ref[0][:, -1:], axis=-1).astype(np.int64)
    allowed = options.tolerance * scale
    if not worst <= allowed:  # also catches NaN
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch: max |logits diff| {worst:.3g} > {allowed:.3g}; "
            "nothing written"
        )
    return worst, allowed


def _move_into_place(staged: Path, output: Path, data_name: str | None) -> Path | None:
    """Rename the weights file first, the model last: the model never appears without its weights."""
    data_path = None
    if data_name is not None:
        data_path = output.with_name(data_name)
        os.replace(staged.with_name(data_name), data_path)
    os.replace(staged, output)
    return data_path


def export_hf(
    source: str | Path,
    output: str | Path,
    options: ExportOptions | None = None,
    on_stage: Stage | None = None,
    cache_dir: str | Path | None = None,
) -> ExportResult:
    """Export the causal LM at ``source`` to ``output`` (see the module docstring)."""
    options = options or ExportOptions()
    stage = on_stage or (lambda _msg: None)
    start = time.perf_counter()
    output = Path(output).expanduser()
    if output.is_dir():
        raise ExportError(f"output {output} is a directory; give a file name such as model.onnx")
    if not output.parent.is_dir():
        raise ExportError(f"output folder {output.parent} does not exist")
    directory = resolve_source(source, cache_dir)
    label = str(source)

    stage(f"loading {label}")
    torch, _ = _require_extra()
    if options.threads:
        torch.set_num_threads(options.threads)
    model = _load_model(directory, label)
    config = model.config
    max_len = _max_seq_len(config, options.max_seq_len)
    wrapper = _make_wrapper(model)
    shape = _probe(wrapper)
    tokenizer = _tokenizer_json(directory) if options.include_tokenizer else None

    stage(f"tracing {config.model_type} ({shape.num_layers} layers) to ONNX")
    onnx_program = _trace(wrapper, shape, options)
    origin = str(directory) if Path(str(source)).expanduser().exists() else str(source)
    values: md.MetadataValues = {
        "kind": ModelKind.CAUSAL_LM, "num_layers": shape.num_layers, "source": origin,
        "model_type": str(config.model_type),
    }
    if max_len is not None:
        values["max_seq_len"] = max_len
    if tokenizer is not None:
        values["tokenizer"] = tokenizer
    onnx_program.model.metadata_props.update(md.encode(**values))

    external = options.external_data
    if external is None:
        external = _initializer_bytes(onnx_program) > _PROTOBUF_LIMIT
    data_name = f"{output.name}.data" if external else None
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = staging / output.name
        stage("writing the ONNX file")
        with _quiet():
            onnx_program.save(staged, external_data=external)
        stage("checking ONNX Runtime against PyTorch")
        diff, allowed = _verify(staged, wrapper, shape, options)
        data_path = _move_into_place(staged, output, data_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = output.stat().st_size + (data_path.stat().st_size if data_path else 0)
    return ExportResult(
        path=output,
        data_path=data_path,
        size_bytes=size,
        source=origin,
        model_type=str(config.model_type),
        num_layers=shape.num_layers,
        kv_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        vocab_size=shape.vocab_size,
        max_seq_len=max_len,
        tokenizer=tokenizer is not None,
        max_abs_diff=diff,
        allowed_diff=allowed,
        seconds=time.perf_counter() - start,
    )


def describe(result: ExportResult) -> dict[str, Any]:
    """``result`` as JSON-ready values."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result).items()}
