"""Profiling the tiers from this machine: the I/O around the pure planner, for ``tierflow plan`` and benches.

Each tier is one of:

* **measured here** -- the model runs through a :class:`~tierflow.runtime.stages.StageRunner`
  with the tier's session options and, for a simulated weak device, its slowdown
  (which acts on the real execution: the profile learns it by timing);
* **reported** -- stage timings the tier measured itself (a remote node's statistics),
  turned into a profile with :func:`~tierflow.profiling.profiler.profile_remote`;
* **a stand-in** -- this machine's measured profile divided by a documented speed-up,
  for a tier that cannot be measured from here (a datacenter GPU box). Such a profile
  is marked ``source = "scaled"`` wherever it is shown.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from tierflow.errors import InvalidModelError
from tierflow.model.package import Package
from tierflow.model.registry import resolve_model
from tierflow.planner.estimate import DeviceMonitor
from tierflow.planner.graph import UnitGraph
from tierflow.planner.profile import StageTiming, TierProfile, profile_remote, unit_shares
from tierflow.profiling.graph_builder import example_feeds, input_dtypes
from tierflow.profiling.profiler import ProfileCache, node_times, profile_local, tier_fingerprint
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.stages import StageRunner


def load_model(spec: str | Path, target: str | None = None) -> tuple[onnx.ModelProto, str]:
    """A model from a bundled name, an ``.onnx`` file or a ``.tfm`` package (``target``, default:
    the package's most capable target). Returns the model and a label for it."""
    text = str(spec)
    if text.endswith(".tfm"):
        package = Package.open(text)
        name = target or list(package.manifest.targets)[-1]
        return onnx.load_from_string(package.artifact(name)), f"{Path(text).name}#{name}"
    path = resolve_model(text)
    try:
        return onnx.load(str(path)), text if not text.endswith(".onnx") else path.name
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise InvalidModelError(f"{path} is not a valid ONNX model: {reason}") from exc


@dataclass(frozen=True)
class TierSetup:
    """How to obtain one tier's profile (see the module docstring)."""

    name: str
    slowdown: float = 1.0  # measured here, each stage stretched this much (a simulated weaker device)
    speedup: float = 1.0  # not measured: this machine's profile / speedup
    timings: tuple[StageTiming, ...] = ()  # reported by the tier itself

    @property
    def how(self) -> str:
        if self.timings:
            return f"reported ({len(self.timings)} stage timings)"
        if self.speedup != 1.0:
            return f"this machine / {self.speedup:g} (assumed)"
        if self.slowdown != 1.0:
            return f"measured here, simulated x{self.slowdown:g} slower"
        return "measured here"


@dataclass
class LocalProfiler:
    """Profiles every tier of one model, with an on-disk cache."""

    model: onnx.ModelProto
    graph: UnitGraph
    options: SessionOptions = field(default_factory=lambda: SessionOptions(intra_op_threads=1))
    runs: int = 3
    cache: ProfileCache | None = field(default_factory=ProfileCache)
    refresh: bool = False
    monitor: DeviceMonitor | None = None
    _shares: dict[str, float] | None = None
    _host: TierProfile | None = None

    def __post_init__(self) -> None:
        self.feeds = example_feeds(self.graph, input_dtypes(self.model))

    @property
    def shares(self) -> dict[str, float]:
        """Per-unit kernel seconds from ONNX Runtime's profiler (computed once)."""
        if self._shares is None:
            threads = self.options.intra_op_threads or 1
            times = node_times(self.model, self.feeds, runs=max(1, min(self.runs, 3)), threads=threads,
                               providers=self.options.providers)
            self._shares = unit_shares(self.graph, times)
        return self._shares

    def _config(self) -> dict[str, object]:
        return {"threads": self.options.intra_op_threads, "providers": self.options.providers}

    def _cached(self, fingerprint: str) -> TierProfile | None:
        if self.cache is None or self.refresh:
            return None
        return self.cache.get(self.graph, fingerprint)

    def _store(self, profile: TierProfile) -> TierProfile:
        if self.cache is not None:
            self.cache.put(self.graph, profile)
        return profile

    def measure(self, tier: str, slowdown: float = 1.0) -> TierProfile:
        """Run the model here as ``tier`` runs it (with ``slowdown``) and profile it."""
        fingerprint = tier_fingerprint(tier, simulated_slowdown=slowdown, **self._config())
        cached = self._cached(fingerprint)
        if cached is not None:
            return cached
        runner = StageRunner(self.model, self.options, slowdown=slowdown)
        if self.monitor is not None:
            self.monitor.read()  # start the load window at the first timed run
        profile = profile_local(self.graph, runner.run, self.feeds, self.shares, tier=tier,
                                fingerprint=fingerprint, runs=self.runs)
        if self.monitor is not None:
            profile = profile.model_copy(update={"load": self.monitor.read().load})
        return self._store(profile)

    def host(self) -> TierProfile:
        """This machine at full speed (the base of stand-in profiles)."""
        if self._host is None:
            self._host = self.measure("host")
        return self._host

    def profile(self, setup: TierSetup) -> TierProfile:
        if setup.timings:
            raw = "|".join(t.model_dump_json() for t in setup.timings)
            fingerprint = "reported-" + hashlib.sha256(raw.encode()).hexdigest()[:12]
            return profile_remote(self.graph, self.shares, setup.timings, tier=setup.name,
                                  fingerprint=fingerprint)
        if setup.speedup != 1.0:
            host = self.host()
            fingerprint = f"{host.fingerprint}/{setup.speedup:g}"
            return host.scaled(setup.speedup, tier=setup.name, fingerprint=fingerprint)
        if setup.slowdown == 1.0:
            return self.host().model_copy(update={"tier": setup.name})
        return self.measure(setup.name, setup.slowdown)

    def profiles(self, setups: Sequence[TierSetup]) -> dict[str, TierProfile]:
        return {s.name: self.profile(s) for s in setups}
