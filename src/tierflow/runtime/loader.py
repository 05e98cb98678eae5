"""``tierflow.load()``: open a ``.tfm`` package on the target that suits this machine.

The loader reads the machine's capabilities (:mod:`tierflow.runtime.capabilities`),
picks a target with a :class:`Policy`, checks the artifact's hash, and returns a
:class:`TierSession` -- or a :class:`CloudProxy` with the same interface when no
local target fits. Both come in one class per kind of model, each meeting that kind's
protocol of :mod:`tierflow.runtime.interfaces` (``TextModel``, ``ImageModel``, ``GenericModel``).

Policy (docs/PACKAGE.md has the details and examples):

* **default** (no rules): the most capable target that fits. Targets are tried
  from the last in the manifest (most capable) to the first; a target fits when
  the machine meets its ``requires`` (total memory, physical cores, an
  accelerator provider, one of named providers) and has free memory for
  ``artifact size x memory_headroom``.
* **rules**: an ordered list; the first rule whose ``when`` holds names the
  target (or ``cloud-proxy``). With ``require_fit`` (the default) a rule whose
  target does not fit, or is not in the package, is passed over. No rule left:
  the cloud proxy. The seed's rule is :data:`SEED_POLICY`.

A policy can come as a :class:`Policy`, a dict, or a YAML file path (also via
the ``TIERFLOW_POLICY`` environment variable).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, Protocol, Unpack

import numpy as np
import onnx
import yaml
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tierflow.errors import (
    ConfigError,
    InvalidInputError,
    InvalidModelError,
    ProxyUnavailableError,
    UnsupportedModelError,
)
from tierflow.model.package import Manifest, Package, TargetManifest
from tierflow.model.pyramid import first_error
from tierflow.runtime.capabilities import GB, Capabilities, detect
from tierflow.runtime.generic import GenericRunner
from tierflow.runtime.image import ImageResult
from tierflow.runtime.interfaces import GenericKind, ImageKind, LoadedModel, TextKind
from tierflow.runtime.lm import CausalLM, GenerationResult, SamplingConfig, SamplingOptions, sampling_config
from tierflow.runtime.precision import for_provider
from tierflow.runtime.providers import available_providers, ranked_providers, short_name
from tierflow.runtime.session import SessionOptions, active_provider, open_session
from tierflow.runtime.text_to_image import open_generator
from tierflow.types import ModelKind

CLOUD_PROXY = "cloud-proxy"
POLICY_ENV = "TIERFLOW_POLICY"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Condition(_Frozen):
    """Facts about the machine; a rule applies when every given one holds (none given: always)."""

    memory_below_gb: float | None = None
    memory_at_least_gb: float | None = None
    cpu_cores_below: int | None = None
    cpu_cores_at_least: int | None = None
    accelerator_cores_below: int | None = None
    accelerator_cores_at_least: int | None = None
    has_accelerator: bool | None = None
    provider: str | None = None  # this execution provider is available ("CUDA" or the full name)
    battery_below_pct: float | None = None  # only holds on a machine with a battery
    on_battery: bool | None = None

    def holds(self, caps: Capabilities) -> bool:
        checks: list[bool] = []
        if self.memory_below_gb is not None:
            checks.append(caps.memory_total_gb < self.memory_below_gb)
        if self.memory_at_least_gb is not None:
            checks.append(caps.memory_total_gb >= self.memory_at_least_gb)
        if self.cpu_cores_below is not None:
            checks.append(caps.cpu_cores < self.cpu_cores_below)
        if self.cpu_cores_at_least is not None:
            checks.append(caps.cpu_cores >= self.cpu_cores_at_least)
        if self.accelerator_cores_below is not None:
            checks.append(caps.accelerator_cores < self.accelerator_cores_below)
        if self.accelerator_cores_at_least is not None:
            checks.append(caps.accelerator_cores >= self.accelerator_cores_at_least)
        if self.has_accelerator is not None:
            checks.append(caps.has_accelerator == self.has_accelerator)
        if self.provider is not None:
            checks.append(caps.has_provider(self.provider))
        if self.battery_below_pct is not None:
            checks.append(caps.battery_percent is not None and caps.battery_percent < self.battery_below_pct)
        if self.on_battery is not None:
            checks.append(bool(caps.on_battery) == self.on_battery)
        return all(checks)

    def describe(self) -> str:
        given = self.model_dump(exclude_none=True)
        return ", ".join(f"{k}={v}" for k, v in given.items()) or "always"


class Rule(_Frozen):
    when: Condition = Condition()
    target: str  # a target name, or "cloud-proxy"


class Policy(_Frozen):
    rules: tuple[Rule, ...] = ()  # empty: the default policy (most capable target that fits)
    require_fit: bool = True  # a rule's target must also fit the machine, else the next rule is tried
    memory_headroom: Annotated[float, Field(ge=1.0)] = 2.0  # free memory needed = artifact size x this


DEFAULT_POLICY = Policy()

# The seed's example: "< 8 GB memory -> phone; >= 4 accelerator cores -> edge; otherwise the cloud".
# Taken literally, so no fit check: the rule alone decides.
SEED_POLICY = Policy(
    rules=(
        Rule(when=Condition(memory_below_gb=8), target="phone"),
        Rule(when=Condition(accelerator_cores_at_least=4), target="edge"),
        Rule(target=CLOUD_PROXY),
    ),
    require_fit=False,
)


def load_policy(source: Policy | Mapping[str, Any] | str | Path | None) -> Policy:
    """A :class:`Policy` from a policy, a dict, a YAML file, or None (``$TIERFLOW_POLICY`` or the default)."""
    if isinstance(source, Policy):
        return source
    if source is None:
        env = os.environ.get(POLICY_ENV)
        if not env:
            return DEFAULT_POLICY
        source = env
    label = "policy"
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"policy file not found: {path}")
        label = str(path)
        try:
            source = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"policy {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    try:
        return Policy.model_validate(source)
    except ValidationError as exc:
        raise ConfigError(f"{label}: {first_error(exc)}") from exc


# --- choosing a target -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    target: str  # a target name or "cloud-proxy"
    reason: str  # one line: why


def unmet(spec: TargetManifest, caps: Capabilities, headroom: float = 2.0) -> list[str]:
    """What ``caps`` lacks to run ``spec`` (empty: it fits)."""
    req = spec.requires
    missing = []
    if caps.memory_total_gb < req.min_memory_gb:
        missing.append(f"needs {req.min_memory_gb:g} GB memory, has {caps.memory_total_gb:.1f}")
    if caps.cpu_cores < req.min_cpu_cores:
        missing.append(f"needs {req.min_cpu_cores} cores, has {caps.cpu_cores}")
    if req.accelerator and not caps.has_accelerator:
        missing.append("needs an accelerator provider")
    if req.providers and not any(caps.has_provider(p) for p in req.providers):
        missing.append(f"needs one of {', '.join(req.providers)}")
    need = spec.size_bytes * headroom
    if caps.memory_free_bytes < need:
        missing.append(f"needs {need / GB:.2f} GB free memory, has {caps.memory_free_bytes / GB:.2f}")
    return missing


def choose(manifest: Manifest, caps: Capabilities, policy: Policy = DEFAULT_POLICY) -> Decision:
    """Pick a target of ``manifest`` for a machine with ``caps`` (pure: no I/O)."""
    notes: list[str] = []
    if not policy.rules:
        for name in reversed(list(manifest.targets)):
            missing = unmet(manifest.targets[name], caps, policy.memory_headroom)
            if not missing:
                passed = f" ({'; '.join(notes)})" if notes else ""
                return Decision(name, f"most capable target that fits: {name}{passed}")
            notes.append(f"{name} {missing[0]}")
        return Decision(CLOUD_PROXY, f"no local target fits ({'; '.join(notes)})")
    for index, rule in enumerate(policy.rules, start=1):
        if not rule.when.holds(caps):
            continue
        label = f"rule {index} ({rule.when.describe()})"
        if rule.target == CLOUD_PROXY:
            return Decision(CLOUD_PROXY, f"{label} -> {CLOUD_PROXY}")
        if rule.target not in manifest.targets:
            notes.append(f"{label}: no target {rule.target} in the package")
            continue
        if policy.require_fit:
            missing = unmet(manifest.targets[rule.target], caps, policy.memory_headroom)
            if missing:
                notes.append(f"{label}: {rule.target} {missing[0]}")
                continue
        return Decision(rule.target, f"{label} -> {rule.target}")
    return Decision(CLOUD_PROXY, f"no rule chose a local target ({'; '.join(notes) or 'no rule applied'})")


# --- sessions ----------------------------------------------------------------------------------


def model_kind(kind: str) -> ModelKind:
    """A manifest's ``model.kind`` as a :class:`ModelKind` (a kind this version does not know: generic)."""
    try:
        return ModelKind(kind)
    except ValueError:
        return ModelKind.GENERIC


class TierSession:
    """One target of a package, open on ONNX Runtime: :class:`TextSession`, :class:`ImageSession`
    or :class:`GenericSession` by the package's kind (see :mod:`tierflow.runtime.interfaces`).

    ``run(feeds)`` works for every model.
    """

    kind: ModelKind

    def __init__(self, package: Package, target: str, data: bytes, decision: str, options: SessionOptions):
        self.package = package
        self.manifest = package.manifest
        self.target = target
        self.spec = package.manifest.target(target)
        self.decision = decision
        try:
            stored = onnx.load_from_string(data)
        except DecodeError as exc:
            open_session(data, options)  # raises the one-line InvalidModelError naming what is wrong
            raise InvalidModelError(f"target {target} is not a readable ONNX model") from exc
        # what runs: the stored artifact, or its widened form (runtime/precision.py)
        self.proto, self.widened = for_provider(stored, options.provider)
        self.session = open_session(self.proto.SerializeToString() if self.widened else data, options)

    @property
    def provider(self) -> str:
        return active_provider(self.session)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the artifact on ``feeds`` (every input, by name); all outputs by name."""
        missing = [i.name for i in self.session.get_inputs() if i.name not in feeds]
        if missing:
            raise InvalidInputError(
                f"missing input {missing[0]!r} (target {self.target} takes {self.spec.inputs})"
            )
        return GenericRunner(self.session).run(dict(feeds)).arrays

    def describe(self) -> str:
        precision = f"{self.spec.precision} (computed in fp32)" if self.widened else self.spec.precision
        return f"target={self.target} provider={short_name(self.provider)} precision={precision}"


class TextSession(TierSession):
    """A language model's target: ``generate(prompt, config, on_text=..., **options)``."""

    kind: TextKind = ModelKind.CAUSAL_LM

    def __init__(self, package: Package, target: str, data: bytes, decision: str, options: SessionOptions):
        super().__init__(package, target, data, decision, options)
        self.lm = CausalLM(self.session)

    def generate(
        self,
        prompt: str,
        config: SamplingConfig | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        **options: Unpack[SamplingOptions],
    ) -> GenerationResult:
        if prompt is None:
            raise InvalidInputError("a language model needs a prompt")
        return self.lm.generate(prompt, sampling_config(config, options), on_text=on_text)


class ImageSession(TierSession):
    """An image generator's target: ``generate(prompt, resolution=..., refine=..., seed=...)``."""

    kind: ImageKind = ModelKind.IMAGE_GENERATOR

    def __init__(self, package: Package, target: str, data: bytes, decision: str, options: SessionOptions):
        super().__init__(package, target, data, decision, options)
        self.image = open_generator(self.session, self.proto)

    def generate(
        self,
        prompt: str | None = None,
        *,
        resolution: int | None = None,
        refine: bool | None = None,
        seed: int | None = None,
    ) -> ImageResult:
        cap = self.spec.max_resolution
        if resolution is None:
            resolution = default_resolution(cap)
        if cap is not None and resolution > cap:
            raise InvalidInputError(
                f"target {self.target} makes images up to {cap} px; asked for {resolution}"
            )
        if refine is None:
            refine = self.image.has_refiner  # the cloud target refines by default
        return self.image.generate(prompt, resolution, refine=refine, seed=seed)


class GenericSession(TierSession):
    """Any other model's target: ``run(feeds)`` only."""

    kind: GenericKind

    def __init__(
        self,
        package: Package,
        target: str,
        data: bytes,
        decision: str,
        options: SessionOptions,
        kind: GenericKind = ModelKind.GENERIC,
    ):
        super().__init__(package, target, data, decision, options)
        self.kind = kind

    def generate(self, *args: object, **kwargs: object) -> NoReturn:
        """Not for this kind: a one-line error for a caller that did not look at ``kind``."""
        raise UnsupportedModelError(f"a {self.kind} model has no generate(); call run(feeds)")


def default_resolution(cap: int | None) -> int:
    """The side an image is painted at when the caller does not say: 256, or the target's limit if lower."""
    return min(256, cap) if cap else 256


class RemoteTarget(Protocol):
    """What the cloud proxy delegates to (the engine room provides it over the data plane)."""

    @property
    def provider(self) -> str: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def generate_text(
        self, prompt: str, config: SamplingConfig, on_text: Callable[[str], None] | None
    ) -> GenerationResult: ...

    def generate_image(
        self, prompt: str | None, resolution: int | None, refine: bool | None, seed: int | None
    ) -> ImageResult: ...


class CloudProxy:
    """Stands in for a target this machine cannot run: the same calls, run by a cloud node
    (:class:`TextProxy`, :class:`ImageProxy` or :class:`GenericProxy` by the package's kind).

    Without a configured cloud node every call raises :class:`ProxyUnavailableError`.
    """

    target = CLOUD_PROXY
    kind: ModelKind

    def __init__(self, manifest: Manifest, decision: str, remote: RemoteTarget | None = None) -> None:
        self.manifest = manifest
        self.decision = decision
        self.remote = remote

    @property
    def provider(self) -> str | None:
        return self.remote.provider if self.remote is not None else None

    def _target(self) -> RemoteTarget:
        if self.remote is None:
            raise ProxyUnavailableError(
                f"no cloud node configured: {self.manifest.model.name} needs the cloud here "
                f"({self.decision}); set TIERFLOW_CLOUD=HOST:PORT and TIERFLOW_CERTS=DIR"
            )
        return self.remote

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._target().run(feeds)

    def describe(self) -> str:
        return f"target={CLOUD_PROXY} provider={self.provider or 'none'}"


class TextProxy(CloudProxy):
    """A language model run by the cloud node."""

    kind: TextKind = ModelKind.CAUSAL_LM

    def generate(
        self,
        prompt: str,
        config: SamplingConfig | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        **options: Unpack[SamplingOptions],
    ) -> GenerationResult:
        if prompt is None:
            raise InvalidInputError("a language model needs a prompt")
        return self._target().generate_text(prompt, sampling_config(config, options), on_text)


class ImageProxy(CloudProxy):
    """An image generator run by the cloud node."""

    kind: ImageKind = ModelKind.IMAGE_GENERATOR

    def generate(
        self,
        prompt: str | None = None,
        *,
        resolution: int | None = None,
        refine: bool | None = None,
        seed: int | None = None,
    ) -> ImageResult:
        return self._target().generate_image(prompt, resolution, refine, seed)


class GenericProxy(CloudProxy):
    """Any other model run by the cloud node: ``run(feeds)`` only."""

    kind: GenericKind

    def __init__(
        self,
        manifest: Manifest,
        decision: str,
        remote: RemoteTarget | None = None,
        kind: GenericKind = ModelKind.GENERIC,
    ) -> None:
        super().__init__(manifest, decision, remote)
        self.kind = kind

    def generate(self, *args: object, **kwargs: object) -> NoReturn:
        """Not for this kind: a one-line error for a caller that did not look at ``kind``."""
        raise UnsupportedModelError(f"a {self.kind} model has no generate(); call run(feeds)")


def load(
    path: str | Path,
    policy: Policy | Mapping[str, Any] | str | Path | None = None,
    capabilities: Capabilities | None = None,
    target: str | None = None,
    threads: int = 0,
    remote: Callable[[Manifest], RemoteTarget] | None = None,
) -> LoadedModel:
    """Open the package at ``path`` on the target this machine should run (see the module doc).

    The result is a :class:`~tierflow.runtime.interfaces.TextModel`, ``ImageModel`` or
    ``GenericModel`` by the package's kind -- a local :class:`TierSession` or a
    :class:`CloudProxy`, with the same calls. ``target`` forces a target by name (or
    ``"cloud-proxy"``) without the fit check; ``capabilities`` replaces detection (tests,
    what-if planning); ``remote`` makes the cloud proxy's transport for a manifest (see
    :func:`tierflow.engine.load.load`).
    """
    package = Package.open(path)
    caps = capabilities or detect()
    if target is not None:
        if target != CLOUD_PROXY:
            package.manifest.target(target)  # UnknownTargetError for a name the package lacks
        decision = Decision(target, f"target {target} requested")
    else:
        decision = choose(package.manifest, caps, load_policy(policy))
    kind = model_kind(package.manifest.model.kind)
    # what has no runner of its own (a crack detector, any other model) runs as a generic model
    generic: GenericKind = ModelKind.VISION if kind is ModelKind.VISION else ModelKind.GENERIC
    if decision.target == CLOUD_PROXY:
        transport = remote(package.manifest) if remote else None
        if kind is ModelKind.CAUSAL_LM:
            return TextProxy(package.manifest, decision.reason, transport)
        if kind is ModelKind.IMAGE_GENERATOR:
            return ImageProxy(package.manifest, decision.reason, transport)
        return GenericProxy(package.manifest, decision.reason, transport, generic)
    data = package.artifact(decision.target)  # checks size and sha256
    options = SessionOptions(threads, _providers(caps))
    if kind is ModelKind.CAUSAL_LM:
        return TextSession(package, decision.target, data, decision.reason, options)
    if kind is ModelKind.IMAGE_GENERATOR:
        return ImageSession(package, decision.target, data, decision.reason, options)
    return GenericSession(package, decision.target, data, decision.reason, options, generic)


def _providers(caps: Capabilities) -> tuple[str, ...]:
    """The providers ``caps`` allows that this ONNX Runtime really has, best first, CPU last."""
    real = set(available_providers())
    return tuple(
        p for p in ranked_providers(list(caps.providers)) if p in real or p == "CPUExecutionProvider"
    )
