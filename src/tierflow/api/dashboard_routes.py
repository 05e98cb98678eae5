"""The dashboard (a page served here, nothing loaded from elsewhere) and the deployment's controls.

``GET /dashboard`` is the page; ``GET /dashboard/state`` is everything it shows, in one JSON
document (docs/API.md, "The dashboard"); ``PUT /deployment/links/{name}`` and ``POST
/deployment/tiers/{tier}/{down|up}`` change the local deployment through its control
(:mod:`tierflow.node.deployment_control`, in the ``tierflow up`` process), then tell the entry
point's planner at once, as an operator's change is known, not guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from tierflow.api import errors
from tierflow.api.auth import caller
from tierflow.api.deployment_client import DeploymentClient
from tierflow.api.routes import APIState, state_of
from tierflow.engine.sharded import ShardedLM, spans_text
from tierflow.errors import InvalidInputError, TierUnavailableError
from tierflow.types.links import BACKHAUL, PROFILES, get_profile
from tierflow.types.tiers import Tier

router = APIRouter()

STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _static(name: str) -> bytes:
    return resources.files("tierflow.api").joinpath("static", name).read_bytes()


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    """The live dashboard (its key comes in the URL's fragment, ``#key=...``, and never leaves the page)."""
    return Response(_static("dashboard.html"), media_type="text/html")


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def dashboard_static(name: str) -> Response:
    if name not in STATIC:
        return Response(status_code=404)
    return Response(_static(name), media_type=STATIC[name])


def _tiers(lm: ShardedLM, processes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tier, record in lm.tiers.items():
        span = lm.spans.get(tier)
        out[tier.value] = {
            "available": record.available,
            "layer_ms": round(record.layer_s * 1000.0, 4) if record.layer_s is not None else None,
            "memory_mib": round(record.memory_bytes / 2**20, 1) if record.memory_bytes else None,
            "layers": str(span) if span is not None else None,
            "process": processes.get(tier.value),
        }
    return out


def _links(lm: ShardedLM, emulated: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, figures in emulated.items():
        a, _, b = name.partition("-")
        measured = lm.link_rtt.get(frozenset((Tier(a), Tier(b))))
        out[name] = {**figures, "measured_rtt_ms": round(measured * 1000.0, 3) if measured else None}
    return out


async def dashboard_state(state: APIState, owner: str) -> dict[str, Any]:
    lm = state.conversations.lm
    deployment: dict[str, Any] = {"links": {}, "tiers": {}}
    if state.deployment is not None:
        with contextlib.suppress(TierUnavailableError):  # the page shows the entry point's view then
            deployment = await state.deployment.call("GET", "/deployment")
    plan = lm.plan
    matrix = state.conversations.router.snapshot()
    records = await asyncio.to_thread(state.store.list, owner)
    now = time.time()
    return {
        "model": lm.model_name,
        "images": state.routed_images is not None,
        "tiers": _tiers(lm, deployment.get("tiers", {})),
        "plan": {
            "spans": spans_text(lm.spans),
            "token_ms": round(plan.token_s * 1000.0, 3) if plan is not None else None,
            "alternatives": [
                {"spans": {t.value: f"{a}-{b}" for t, (a, b) in p.spans.items()},
                 "token_ms": round(p.token_s * 1000.0, 3)}
                for p in lm.alternatives[1:4]
            ],
        },
        "links": _links(lm, deployment.get("links", {})),
        "matrix": matrix,
        "recent": state.recent.list(),
        "contexts": [
            {"context_id": r.context_id, "tokens": len(r.tokens), "expires_in": round(r.expires_in(now), 1),
             "spans": r.spans}
            for r in records
        ],
        "device": matrix["device"],
        "controls": {
            "links": state.deployment is not None and bool(deployment.get("links")),
            "profiles": [*PROFILES, BACKHAUL.name],
            "tiers": deployment.get("switchable", []),
        },
    }


@router.get("/dashboard/state", responses=errors.responses(401))
async def state_route(request: Request, owner: str = Depends(caller)) -> dict[str, Any]:
    """Everything the dashboard shows, now."""
    return await dashboard_state(state_of(request), owner)


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str = Field(max_length=60, examples=["3g"])


def _control(state: APIState) -> DeploymentClient:
    if state.deployment is None:
        raise InvalidInputError("this entry point has no local deployment to control (tierflow up has one)")
    return state.deployment


async def _plan_on(lm: ShardedLM, links: dict[str, Any]) -> None:
    """Tell the planner the links as the deployment now has them (device-cloud goes on over edge-cloud)."""
    names = {name: get_profile(figures["profile"], InvalidInputError) for name, figures in links.items()}
    if "edge-cloud" in names:  # the part of the device's way to the cloud past its access
        lm.link_far[frozenset((Tier.DEVICE, Tier.CLOUD))] = names["edge-cloud"]
    pairs = {"device-edge": (Tier.DEVICE, Tier.EDGE), "edge-cloud": (Tier.EDGE, Tier.CLOUD)}
    changes = {pairs[name]: profile for name, profile in names.items() if name in pairs}
    if "device-cloud" in names:
        changes[(Tier.DEVICE, Tier.CLOUD)] = lm.access_profile(Tier.CLOUD, names["device-cloud"])
    await lm.set_links(changes)


@router.put("/deployment/links/{name}", responses=errors.responses(401, 422, 503))
async def set_link(
    name: str, body: LinkBody, request: Request, owner: str = Depends(caller)
) -> dict[str, Any]:
    """Change a link's SIMULATED profile live: ``device-edge``, ``device-cloud`` or ``edge-cloud``."""
    state = state_of(request)
    get_profile(body.profile, InvalidInputError)  # a bad name is refused here, naming the known ones
    snapshot = await _control(state).call("PUT", f"/deployment/links/{name}", {"profile": body.profile})
    await _plan_on(state.conversations.lm, snapshot["links"])
    if state.routed_images is not None:
        state.routed_images.refresh()  # a tier that was out of reach over the old link may be back
    return {"links": _links(state.conversations.lm, snapshot["links"])}


@router.post("/deployment/tiers/{tier}/{action}", responses=errors.responses(401, 422, 503))
async def switch_tier(
    tier: str, action: str, request: Request, owner: str = Depends(caller)
) -> dict[str, Any]:
    """Take the edge or the cloud down (its process stops) or bring it back up."""
    state = state_of(request)
    # the control refuses an unknown tier or action, and the device (422) before anything happens
    snapshot = await _control(state).call("POST", f"/deployment/tiers/{tier}/{action}")
    lm = state.conversations.lm
    if action == "down":
        await lm.mark_down(Tier(tier))
    else:
        await lm.probe(Tier(tier))
        await lm.replan()
    if state.routed_images is not None:
        state.routed_images.forget(Tier(tier))  # its image model is asked again
    return {"tiers": _tiers(lm, snapshot["tiers"])}
