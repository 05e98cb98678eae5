"""``tierflow bench route``: the router against static policies and a hindsight oracle, over a trace.

One deployment of real node processes on this machine: the device node (the entry point, its
compute SIMULATED ``device_slowdown`` x slower), the edge (``edge_slowdown`` x) and the cloud, each
serving demo-lm and its own target of a random-image package (the phone makes up to 256 px, the
edge 1024, the cloud 2048 with the refiner). The benchmark process is the app on the phone: it
talks HTTP to the entry point, which is not behind an emulated link.

The trace is a list of segments -- the device's access network (a SIMULATED link profile applied
live to both device links, or ``offline``), whether it is metered -- while the battery drains
linearly from 100 % to 5 % over the whole trace. At each segment's start the app reports the
network to the entry point (as a phone's OS tells its apps), then sends that segment's requests,
cycling through a mix of text and image requests that carry SLAs (:data:`MIX`).

Each request runs once per policy, one after the other under the same conditions (the order
rotates from one request to the next, so no policy always goes first):

* ``tierflow``: the request as an app sends it -- its SLA, the battery level, the metered flag;
  the router decides;
* ``always-device`` / ``always-edge`` / ``always-cloud``: the same SLA, pinned to that tier
  (``tier`` in the body): the same degradation of image size within the tier, no tier choice;
* ``oracle`` (hindsight): per request, the best of the three static outcomes just measured --
  SLA met first, then quality, then the least device energy. It knows what each tier actually
  did under the conditions of that moment, which no router can know beforehand.

Per request: ``sla_met`` = answered, not degraded, within ``max_latency`` as the app measured it
and at least ``min_resolution``; ``quality`` = 1 for an answered text request (every tier runs
the full model), ``resolution / size asked`` for an image, 0 when it failed; device energy from
the planner's power model (:class:`~tierflow.planner.power.DevicePower`) over what was measured:
the request's wall time, the device's own compute (as the reply reports it) and the bytes the
device's links carried (counted by the emulators) on the radio of the segment's network.

Before the trace, every request of the mix runs once on each tier over wifi, not counted: the
sessions are warm and the matrix has seen each kind of work once.

``battery_life_vs_always_device`` is always-device's device energy over tierflow's for the same
requests: how much longer the same battery lasts on this mix (the seed claims +35 %, i.e. 1.35).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tierflow.context.factory import open_store
from tierflow.context.local_key import local_key
from tierflow.errors import ConfigError
from tierflow.model.registry import resolve_model
from tierflow.node.deploy import DEVICE_CLOUD, DEVICE_EDGE, EntrySettings, LocalDeployment, deploy_local
from tierflow.planner.power import DevicePower, radio_for_profile
from tierflow.types.links import get_profile, transfer_s
from tierflow.types.tasks import Prefer
from tierflow.types.tiers import Tier

POLICIES = ("tierflow", "always-device", "always-edge", "always-cloud")
STATIC = {"always-device": Tier.DEVICE, "always-edge": Tier.EDGE, "always-cloud": Tier.CLOUD}
BATTERY_START, BATTERY_END = 100.0, 5.0
SEED_BATTERY_CLAIM = 1.35  # the seed: energy-aware scheduling extends battery life by 35 %
HTTP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Segment:
    """A stretch of the trace: the device's access network and whether it is metered."""

    network: str
    metered: bool = False

    @classmethod
    def parse(cls, text: str) -> Segment:
        """``4g``, ``4g:metered``, ``offline``."""
        name, _, flag = text.strip().partition(":")
        if flag not in ("", "metered"):
            raise ConfigError(f"--trace: a segment is PROFILE or PROFILE:metered, not {text!r}")
        get_profile(name)  # an unknown profile fails here, naming the known ones
        return cls(name, flag == "metered")


DEFAULT_TRACE = (
    Segment("wifi"),
    Segment("4g", metered=True),
    Segment("3g"),
    Segment("offline"),
    Segment("wifi"),
    Segment("4g", metered=True),
    Segment("3g"),
    Segment("offline"),
)


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request of the mix."""

    name: str
    endpoint: str  # "/generate" or "/v1/images/generations"
    body: dict[str, Any]
    sla: dict[str, Any]

    @property
    def is_image(self) -> bool:
        return self.endpoint.startswith("/v1/images")

    @property
    def size(self) -> int:
        return int(str(self.body["size"]).partition("x")[0]) if self.is_image else 0


MIX = (
    RequestSpec("chat", "/generate", {"prompt": "def ", "max_tokens": 24, "temperature": 0},
                {"max_latency": 3.0, "prefer": "latency"}),
    RequestSpec("image-1024", "/v1/images/generations", {"prompt": "a red car", "size": "1024x1024"},
                {"max_latency": 4.0, "min_resolution": 256, "prefer": "quality", "offline_ok": True}),
    RequestSpec("note", "/generate", {"prompt": "for ", "max_tokens": 16, "temperature": 0},
                {"max_latency": 2.0, "offline_ok": True}),
    RequestSpec("image-512", "/v1/images/generations", {"prompt": "a blue house", "size": "512x512"},
                {"max_latency": 2.5, "min_resolution": 512, "prefer": "quality"}),
)


@dataclass(frozen=True)
class Outcome:
    """What one request of one policy did."""

    ok: bool
    sla_met: bool
    degraded: bool
    quality: float
    energy_j: float
    wall_s: float
    tier: str | None
    offline_ok: bool
    error: str | None = None


def battery_at(i: int, n: int) -> float:
    return BATTERY_START - (BATTERY_START - BATTERY_END) * (i / max(n - 1, 1))


class _Radio:
    """Bytes the device's links carried since the last reading (the emulators count them)."""

    def __init__(self, deployment: LocalDeployment) -> None:
        self.deployment = deployment
        self.last = self._read()

    def _read(self) -> tuple[int, int]:
        sent = received = 0
        for name in (DEVICE_EDGE, DEVICE_CLOUD):
            stats = self.deployment.links[name].stats()
            sent, received = sent + stats.up.bytes, received + stats.down.bytes
        return sent, received

    def since(self) -> tuple[int, int]:
        now = self._read()
        delta = (now[0] - self.last[0], now[1] - self.last[1])
        self.last = now
        return delta


def _device_compute_s(spec: RequestSpec, reply: dict[str, Any]) -> float:
    route = reply.get("route") or {}
    if spec.is_image:
        return float(route.get("compute_s", 0.0)) if route.get("tier") == Tier.DEVICE.value else 0.0
    return float((route.get("compute_s") or {}).get(Tier.DEVICE.value, 0.0))


def _tier_of(spec: RequestSpec, reply: dict[str, Any]) -> str | None:
    route = reply.get("route") or {}
    if spec.is_image:
        return str(route.get("tier"))
    decision = route.get("decision")
    if decision:
        return str(decision["tier"])
    spans = route.get("spans") or {}
    return max(spans, key=[t.value for t in Tier].index) if spans else None


def _run_one(
    http: httpx.Client, spec: RequestSpec, body: dict[str, Any], radio: _Radio, segment: Segment
) -> Outcome:
    radio.since()
    started = time.perf_counter()
    try:
        answer = http.post(spec.endpoint, json=body, timeout=HTTP_TIMEOUT_S)
        data: dict[str, Any] = answer.json()
        error = None if answer.is_success else f"{answer.status_code} {data.get('error', '')}"
        reply = data if answer.is_success else {}
    except ValueError:  # an answer that is not JSON: counted as failed, the bench goes on
        error, reply = f"{answer.status_code} not JSON", {}
    except httpx.HTTPError as exc:
        error, reply = f"transport: {type(exc).__name__}", {}
    wall = time.perf_counter() - started
    sent, received = radio.since()
    profile = get_profile(segment.network)
    power = DevicePower(radio=radio_for_profile(segment.network))
    up = profile.up_bps if not profile.offline else 1e9
    down = profile.down_bps if not profile.offline else 1e9
    energy = power.energy_j(
        wall,
        _device_compute_s(spec, reply) if error is None else 0.0,
        sent_bytes=sent,
        send_s=transfer_s(sent, up),
        received_bytes=received,
        receive_s=transfer_s(received, down),
    )
    offline_ok = bool(spec.sla.get("offline_ok"))
    if error is not None:
        return Outcome(False, False, False, 0.0, energy, wall, None, offline_ok, error)
    route = reply.get("route") or {}
    degraded = bool(route.get("degraded") or (route.get("decision") or {}).get("degraded"))
    in_time = wall <= float(spec.sla.get("max_latency", float("inf")))
    if spec.is_image:
        resolution = int(route.get("resolution", 0))
        quality = resolution / spec.size
        big_enough = resolution >= int(spec.sla.get("min_resolution", spec.size))
    else:
        quality, big_enough = 1.0, True
    return Outcome(True, in_time and big_enough and not degraded, degraded, quality, energy, wall,
                   _tier_of(spec, reply), offline_ok)


def oracle_of(outcomes: Sequence[Outcome], prefer: str | None = None) -> Outcome:
    """The best static outcome in hindsight: SLA met, then quality, then the least device energy
    (with ``prefer`` energy: SLA met, then the least energy, then quality)."""
    if prefer is not None and Prefer.parse(prefer) is Prefer.ENERGY:
        return max(outcomes, key=lambda o: (o.sla_met, o.ok, -o.energy_j, o.quality))
    return max(outcomes, key=lambda o: (o.sla_met, o.ok, o.quality, -o.energy_j))


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    return {
        "requests": n,
        "sla_met_rate": round(sum(o.sla_met for o in outcomes) / n, 4) if n else 0.0,
        "mean_quality": round(sum(o.quality for o in outcomes) / n, 4) if n else 0.0,
        "device_energy_j": round(sum(o.energy_j for o in outcomes), 3),
        "failed_requests": sum(not o.ok for o in outcomes),
        "failed_where_offline_ok": sum(not o.ok and o.offline_ok for o in outcomes),
        "degraded": sum(o.degraded for o in outcomes),
        "mean_wall_s": round(sum(o.wall_s for o in outcomes) / n, 4) if n else 0.0,
        "tiers": dict(Counter(o.tier or "failed" for o in outcomes)),
        "errors": dict(Counter(o.error for o in outcomes if o.error)),
    }


def run_route_bench(
    trace: Sequence[Segment] = DEFAULT_TRACE,
    *,
    requests_per_segment: int = 4,
    device_slowdown: float = 4.0,
    edge_slowdown: float = 2.0,
    prefer: str | None = None,
    large: str | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay ``trace`` (see the module docstring) and compare the policies; ``prefer`` replaces what
    every request of the mix prefers (``latency``, ``quality``, ``energy``), for every policy;
    ``large`` (``8x512``, ``24x1024``) serves a random-init Llama of that shape instead of demo-lm:
    text that costs the phone more to compute than to send."""
    if prefer is not None:
        Prefer.parse(prefer)  # an unknown one names the known ones
    if requests_per_segment < 1 or not trace:
        raise ConfigError("the trace needs at least one segment and one request per segment")
    stage = on_stage or (lambda _msg: None)
    from tierflow.compiler.compiler import compile_model

    with tempfile.TemporaryDirectory(prefix="tierflow-bench-route-") as tmp:
        root = Path(tmp)
        stage("compiling random-image into its pyramid of targets")
        package = root / "random-image.tfm"
        compile_model("random-image", package)
        store = str(root / "contexts.sqlite")
        opened = open_store(store)
        try:
            key = local_key(opened, root / "api-key")
        finally:
            opened.close()
        stage("starting device, edge and cloud nodes")
        entry = EntrySettings(store=store, http="127.0.0.1:0", device_slowdown=device_slowdown)
        deployment = deploy_local(
            lm_path(large, stage), root / "pki", trace[0].network, threads=1, edge_slowdown=edge_slowdown,
            entry=entry, image_models={t: package for t in Tier}, seed=0,
        )
        try:
            settings = {"device_slowdown": device_slowdown, "edge_slowdown": edge_slowdown, "prefer": prefer,
                        "lm": "demo-lm" if large is None else f"llama-{large}"}
            return _replay(deployment, key, trace, requests_per_segment, stage, settings)
        finally:
            deployment.stop()


def lm_path(large: str | None, stage: Callable[[str], None]) -> Path:
    """demo-lm, or the random-init Llama of shape ``large`` (exported once, then cached)."""
    if large is None:
        return resolve_model("demo-lm")
    from tierflow.bench.generate import LLAMA_SHAPES
    from tierflow.compiler.random_hf import ensure_random_llama

    if large not in LLAMA_SHAPES:
        raise ConfigError(f"unknown Llama shape {large!r}; known: {', '.join(LLAMA_SHAPES)}")
    stage(f"the random-init Llama {large} (exported on first use)")
    return ensure_random_llama(LLAMA_SHAPES[large])


def _replay(
    deployment: LocalDeployment,
    key: str,
    trace: Sequence[Segment],
    per_segment: int,
    stage: Callable[[str], None],
    settings: dict[str, Any],
) -> dict[str, Any]:
    assert deployment.api is not None
    radio = _Radio(deployment)
    total = len(trace) * per_segment
    results: dict[str, list[Outcome]] = {p: [] for p in (*POLICIES, "oracle")}
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=deployment.api, headers={"Authorization": f"Bearer {key}"}) as http:
        stage("warming up: every request of the mix once per tier, over wifi (not counted)")
        deployment.set_profile("wifi")
        http.put("/routing/device", json={"network": "wifi"}, timeout=HTTP_TIMEOUT_S)
        for spec in MIX:
            for tier in Tier:
                http.post(spec.endpoint, json={**spec.body, "tier": tier.value}, timeout=HTTP_TIMEOUT_S)
        for s, segment in enumerate(trace):
            deployment.set_profile(segment.network)
            http.put("/routing/device", json={"network": segment.network}, timeout=HTTP_TIMEOUT_S)
            for r in range(per_segment):
                i = s * per_segment + r
                spec = MIX[i % len(MIX)]
                battery = round(battery_at(i, total), 1)
                stage(f"{i + 1}/{total} {segment.network}{' metered' if segment.metered else ''} "
                      f"battery {battery:g} %: {spec.name}")
                sla = spec.sla if settings["prefer"] is None else {**spec.sla, "prefer": settings["prefer"]}
                base = {**spec.body, "sla": sla}
                step: dict[str, Outcome] = {}
                bodies = {
                    "tierflow": {**base, "battery": {"level": battery}, "metered": segment.metered},
                    **{name: {**base, "tier": tier.value} for name, tier in STATIC.items()},
                }
                order = POLICIES[i % len(POLICIES):] + POLICIES[: i % len(POLICIES)]  # none always first
                for name in order:
                    step[name] = _run_one(http, spec, bodies[name], radio, segment)
                step["oracle"] = oracle_of([step[n] for n in STATIC], settings["prefer"])
                for name, outcome in step.items():
                    results[name].append(outcome)
                rows.append({
                    "i": i, "network": segment.network, "metered": segment.metered, "battery": battery,
                    "request": spec.name,
                    **{name: {"tier": o.tier, "met": o.sla_met, "wall_s": round(o.wall_s, 3),
                              "quality": round(o.quality, 3), "energy_j": round(o.energy_j, 3),
                              "error": o.error} for name, o in step.items()},
                })
    policies = {name: summarize(outcomes) for name, outcomes in results.items()}
    return {
        "trace": [f"{s.network}{':metered' if s.metered else ''}" for s in trace],
        "requests": total,
        "mix": [spec.name for spec in MIX],
        "settings": settings,
        "policies": policies,
        "targets": targets(policies),
        "requests_log": rows,
    }


def targets(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, as figures next to their bounds."""
    ours = policies["tierflow"]
    oracle_rate = policies["oracle"]["sla_met_rate"]
    statics = {n: policies[n] for n in STATIC}
    as_good = {n: p for n, p in statics.items() if p["sla_met_rate"] <= ours["sla_met_rate"]}
    lowest = min(as_good.values(), key=lambda p: p["device_energy_j"]) if as_good else None
    # the best static policy: the most SLAs met, then the least energy (the oracle's order)
    best_name, best = max(statics.items(), key=lambda kv: (kv[1]["sla_met_rate"], -kv[1]["device_energy_j"]))
    device_j = policies["always-device"]["device_energy_j"]
    return {
        "sla_vs_oracle": round(ours["sla_met_rate"] / oracle_rate, 4) if oracle_rate else None,
        "sla_vs_oracle_target": 0.99,
        "failed_where_offline_ok": ours["failed_where_offline_ok"],
        "failed_where_offline_ok_target": 0,
        "best_static": best_name,
        "sla_vs_best_static": round(ours["sla_met_rate"] - best["sla_met_rate"], 4),  # >= 0: as good
        "energy_vs_best_static": (
            round(ours["device_energy_j"] / best["device_energy_j"], 4) if best["device_energy_j"] else None
        ),
        "energy_vs_best_static_target": 1.0,
        # stricter: against the least-energy static policy of all those whose SLA rate is no better
        "energy_vs_least_energy_static_at_equal_or_lower_sla": (
            round(ours["device_energy_j"] / lowest["device_energy_j"], 4)
            if lowest and lowest["device_energy_j"] else None
        ),
        "battery_life_vs_always_device": round(device_j / ours["device_energy_j"], 3)
        if ours["device_energy_j"] else None,
        "battery_life_seed_claim": SEED_BATTERY_CLAIM,
    }
