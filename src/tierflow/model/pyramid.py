"""The capability pyramid: which targets a package has and what each keeps.

A pyramid config names the targets (``phone``, ``edge``, ``cloud`` by
default; any name is allowed) and, for each, the precision, which layers stay
active, the context / resolution cap, what a machine needs to run it (read by
the loader's default policy) and the fidelity floor the compiler enforces.

Targets are listed from the least to the most capable: the loader's default
policy tries them in reverse order and takes the first that fits.

A user YAML file is merged over :data:`DEFAULT_PYRAMID` (nested keys replace
single values; a target set to ``null`` is dropped; a new target must give
``device_class`` and ``precision``). The schema is documented in docs/PACKAGE.md.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tierflow.errors import ConfigError

Precision = Literal["int8", "fp16", "fp32"]
PRECISIONS: tuple[str, ...] = ("int8", "fp16", "fp32")
CONFIG_VERSION = 1
_M = TypeVar("_M", bound=BaseModel)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Requirements(_Frozen):
    """What a machine needs to run a target (the loader's default policy checks these)."""

    min_memory_gb: Annotated[float, Field(ge=0)] = 0.0  # total memory of the machine
    min_cpu_cores: Annotated[int, Field(ge=1)] = 1  # physical cores
    accelerator: bool = False  # needs an accelerator execution provider (anything but CPU)
    providers: tuple[str, ...] = ()  # needs one of these providers (empty: any)


class FidelityFloor(_Frozen):
    """The worst fidelity the compiler accepts for a target; ``None`` = not checked.

    Every measure compares the target with its own FP32 counterpart (the same
    layers at full precision) except ``top1_vs_full``, which compares with the
    full FP32 model (what the pyramid cut costs, not just the precision).
    """

    top1: Annotated[float | None, Field(ge=0, le=1)] = None  # min top-1 agreement (LMs, classifiers)
    top1_vs_full: Annotated[float | None, Field(ge=0, le=1)] = None  # min top-1 agreement with the full model
    ppl_ratio: Annotated[float | None, Field(ge=1)] = None  # max perplexity / own FP32 perplexity (LMs)
    psnr_db: float | None = None  # min PSNR of image outputs
    max_abs_error: Annotated[float | None, Field(ge=0)] = None  # max |target - FP32| over every output


class TargetConfig(_Frozen):
    """How the compiler builds one target."""

    device_class: str  # what kind of machine the target is for: phone, edge, cloud, car, glasses...
    precision: Precision
    # LMs: backbone layers kept. "exit" = up to the model's early-exit head (all layers when it has
    # none), "all" = every layer, an integer = exactly that many (must be an exit point or all).
    layers: int | Literal["exit", "all"] = "all"
    cloud_layers: bool = False  # keep cloud-only layers (the image generator's refiner)
    max_seq_len: Annotated[int | None, Field(ge=2)] = None  # LMs: context cap (None: the model's own)
    max_resolution: Annotated[int | None, Field(ge=8)] = None  # image generators: side cap in pixels
    outputs: tuple[str, ...] | None = None  # any model: cut here; these tensors become the outputs
    requires: Requirements = Requirements()
    floor: FidelityFloor = FidelityFloor()

    @field_validator("layers")
    @classmethod
    def _positive_layers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("layers must be >= 1, 'exit' or 'all'")
        return value


class FidelitySettings(_Frozen):
    """What the compiler runs to measure fidelity (kept small so a compile takes seconds)."""

    samples: Annotated[int, Field(ge=1)] = 4  # generated inputs per check (images, classifiers, generic)
    calibration_samples: Annotated[int, Field(ge=1)] = 8  # generated inputs to calibrate static INT8 with
    resolution: Annotated[int, Field(ge=8)] = 64  # image generators are checked at this side (pixels)
    lm_window: Annotated[int, Field(ge=2)] = 128  # tokens per LM window (capped by the target's context)
    lm_windows: Annotated[int, Field(ge=1)] = 4  # windows of held-back text (or random tokens)
    seed: int = 0


class PyramidConfig(_Frozen):
    version: Literal[1] = 1
    targets: dict[str, TargetConfig]
    fidelity: FidelitySettings = FidelitySettings()

    @field_validator("targets")
    @classmethod
    def _names(cls, value: dict[str, TargetConfig]) -> dict[str, TargetConfig]:
        if not value:
            raise ValueError("at least one target is needed")
        for name in value:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"target name '{name}' must be letters, digits, '-' or '_'")
        return value

    def select(self, names: list[str] | None) -> PyramidConfig:
        """Only the targets in ``names`` (in the pyramid's order); unknown names are a ConfigError."""
        if not names:
            return self
        unknown = [n for n in names if n not in self.targets]
        if unknown:
            raise ConfigError(
                f"unknown target {', '.join(unknown)} (the pyramid has {', '.join(self.targets)})"
            )
        kept = {n: t for n, t in self.targets.items() if n in names}
        return self.model_copy(update={"targets": kept})

    def with_floor(self, target: str | None, floor: dict[str, float]) -> PyramidConfig:
        """Override floor values of one target (or of every target when ``target`` is None)."""
        if target is not None and target not in self.targets:
            raise ConfigError(f"--min-fidelity names unknown target '{target}'")
        updated = {}
        for name, spec in self.targets.items():
            if target in (None, name):
                merged = {**spec.floor.model_dump(), **floor}
                spec = spec.model_copy(update={"floor": _validate(FidelityFloor, merged, "--min-fidelity")})
            updated[name] = spec
        return self.model_copy(update={"targets": updated})


# The default pyramid (docs/PACKAGE.md explains each number). Floors were set from measured
# fidelity of the bundled models with a margin: they catch a broken quantization, not noise.
DEFAULT_PYRAMID: dict[str, Any] = {
    "version": 1,
    "targets": {
        "phone": {
            "device_class": "phone",
            "precision": "int8",
            "layers": "exit",
            "cloud_layers": False,
            "max_seq_len": 128,
            "max_resolution": 256,
            "requires": {"min_memory_gb": 1, "min_cpu_cores": 1},
            "floor": {"top1": 0.85, "ppl_ratio": 1.15, "psnr_db": 24.0},
        },
        "edge": {
            "device_class": "edge",
            "precision": "fp16",
            "layers": "all",
            "cloud_layers": False,
            "max_seq_len": 512,
            "max_resolution": 1024,
            "requires": {"min_memory_gb": 8, "min_cpu_cores": 4},
            "floor": {"top1": 0.97, "ppl_ratio": 1.02, "psnr_db": 40.0},
        },
        "cloud": {
            "device_class": "cloud",
            "precision": "fp32",
            "layers": "all",
            "cloud_layers": True,
            "max_seq_len": None,
            "max_resolution": 2048,
            "requires": {"min_memory_gb": 32, "min_cpu_cores": 4, "accelerator": True},
            "floor": {},
        },
    },
    "fidelity": {},
}


def default_pyramid() -> PyramidConfig:
    return _validate(PyramidConfig, DEFAULT_PYRAMID, "default pyramid")


def load_pyramid(path: str | Path | None = None) -> PyramidConfig:
    """The default pyramid, with the YAML file at ``path`` (if any) merged over it."""
    if path is None:
        return default_pyramid()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pyramid config not found: {path}")
    try:
        user = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"pyramid config {path} is not valid YAML: {reason}") from exc
    return pyramid_from_dict(user, label=str(path))


def pyramid_from_dict(user: Any, label: str = "pyramid config") -> PyramidConfig:
    """Merge ``user`` (the parsed YAML) over the default pyramid and validate it."""
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ConfigError(f"{label}: expected a mapping at the top level, got {type(user).__name__}")
    merged = copy.deepcopy(DEFAULT_PYRAMID)
    for key, value in user.items():
        if key == "targets":
            if not isinstance(value, dict):
                raise ConfigError(f"{label}: 'targets' must be a mapping of target name to settings")
            for name, spec in value.items():
                if spec is None:
                    merged["targets"].pop(name, None)
                elif isinstance(spec, dict) and isinstance(merged["targets"].get(name), dict):
                    merged["targets"][name] = _deep_merge(merged["targets"][name], spec)
                else:
                    merged["targets"][name] = spec
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return _validate(PyramidConfig, merged, label)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(model: type[_M], data: Any, label: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{label}: {first_error(exc)}") from exc


def first_error(exc: ValidationError) -> str:
    """The first pydantic error on one line: ``targets.phone.precision: Input should be ...``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {err['msg']}{more}"
