"""The scripted tour of a running deployment (``tierflow demo``): what ran where, and how long it took.

Against ``TIERFLOW_URL`` / ``TIERFLOW_API_KEY``, or a deployment it starts itself (``tierflow up``
in a child process, stopped at the end): a conversation with its context, a routed image, the
route changing when the device's links degrade, a failover when the edge is taken down, an
edit: a rendered road frame's car repainted inside its mask, everything else left as it was, and a
follow-up to the first image ("make it blue") in its context.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tierflow.cli._common import console, spinner
from tierflow.client import Client
from tierflow.errors import TierUnavailableError

IMAGE_SLA = {"max_latency": 8.0, "min_resolution": 256, "offline_ok": True}
UP_TIMEOUT_S = 240.0
# the tour's own deployment splits demo-lm three ways, so the failover has a tier to lose (left to
# itself the planner keeps so small a model on the device: it is faster there than one hop)
TOUR_SPANS = "device=0-1,edge=2-3,cloud=4-5"
PROMPT = "The with statement is used to"


@contextmanager
def local_deployment(profile: str) -> Iterator[tuple[str, str]]:
    """``tierflow up`` in a child process on free ports; yields (api, key); stops it afterwards."""
    with tempfile.TemporaryDirectory(prefix="tierflow-demo-") as tmp:
        argv = [sys.executable, "-m", "tierflow", "up", "--port", "0", "--profile", profile,
                "--spans", TOUR_SPANS,
                "--certs", str(Path(tmp) / "pki"), "--store", str(Path(tmp) / "contexts.sqlite")]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert process.stdout is not None
        try:
            line = process.stdout.readline()  # one JSON line once every node is up
            if not line:
                code = process.wait(UP_TIMEOUT_S)
                raise TierUnavailableError(f"tierflow up exited ({code}) before it was ready")
            info = json.loads(line)
            yield str(info["api"]), str(info["api_key"])
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _route_line(route: dict[str, Any]) -> str:
    spans = ", ".join(f"{t} {s}" for t, s in route.get("spans", {}).items())
    speed = f"{route.get('tokens_per_s', 0):.0f} tokens/s, first token {route.get('ttft_s', 0):.2f} s"
    return f"layers {spans}; {speed}"


def _image(http: httpx.Client, prompt: str, size: int, out: Path) -> dict[str, Any]:
    """Make the image, print where; the reply (``route``, ``context_id``)."""
    body = {"prompt": prompt, "size": f"{size}x{size}", "sla": IMAGE_SLA, "seed": 1}
    answer = http.post("/v1/images/generations", json=body)
    reply = answer.json()
    if not answer.is_success:
        raise TierUnavailableError(f"the image was refused: {reply.get('detail')}")
    out.write_bytes(base64.b64decode(reply["data"][0]["b64_json"]))
    route: dict[str, Any] = reply["route"]
    console.print(
        f"  made on the [bold]{route['tier']}[/] at {route['resolution']} px"
        f"{' (refined)' if route['refined'] else ''} in {route['wall_s']:.2f} s -> {out}", highlight=False
    )
    console.print(f"  [dim]why: {route['decision']['reason']}[/]", highlight=False)
    return reply  # type: ignore[no-any-return]


def _edit(client: Client, out: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from tierflow.model.scenes import parse_prompt, render
    from tierflow.runtime.image import png_bytes
    from tierflow.runtime.text_to_image import touched

    scene = parse_prompt("a white car on a road").scene
    frame = render(scene, 256, seed=11)  # a SIMULATED camera frame
    car = frame.object_ids == 1  # the renderer knows where its car is
    mask = png_bytes(np.dstack([car * 255] * 3).astype(np.uint8))
    (out / "edit-frame.png").write_bytes(png_bytes(frame.image))
    made = client.edit(png_bytes(frame.image), "a red car on a road", mask=mask, seed=2)
    (out / "edit-red.png").write_bytes(made.png)
    edited = np.asarray(Image.open(io.BytesIO(made.png)).convert("RGB"))
    kept = ~touched(car, 256)
    same = float((edited[kept] == frame.image[kept]).all(axis=1).mean())
    route = made.route
    console.print(
        f"  made on the [bold]{route['tier']}[/] in {route['wall_s']:.2f} s -> {out / 'edit-red.png'}; "
        f"{same:.1%} of the pixels outside the mask unchanged", highlight=False
    )


def tour(api: str, key: str, out: Path) -> None:
    """The tour's steps (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {key}"}
    with (
        Client(api, key, timeout=120) as client,
        httpx.Client(base_url=api, headers=headers, timeout=120) as http,
    ):
        console.rule("[bold]1. a conversation[/]: text across the tiers, its context kept")
        first = client.generate(PROMPT, max_tokens=32, temperature=0.8, top_k=40, seed=0)
        console.print(f"  {PROMPT}[bold]{first.text}[/]", highlight=False)
        console.print(f"  [dim]{_route_line(first.route.model_dump())}[/]", highlight=False)
        follow = client.generate(" It", context_id=first.context_id, max_tokens=16, temperature=0.8, seed=1)
        console.print(f"  ... It[bold]{follow.text}[/]", highlight=False)
        console.print(
            f"  follow-up in context {first.context_id[:12]}...: {follow.route.cached_tokens} of "
            f"{follow.route.prompt_tokens} tokens already held as KV on the tiers", highlight=False
        )

        console.rule("[bold]2. an image[/]: routed by its SLA (1024 px wanted, 256 px accepted, 8 s)")
        first_image = _image(http, "a red car on a road", 1024, out / "image-wifi.png")

        console.rule("[bold]3. the network degrades[/]: the device's links drop to 3g, the route follows")
        links = http.get("/dashboard/state").json()["links"]
        if not links:
            console.print("  [dim]this deployment emulates no links: skipped[/]")
        else:
            try:
                for name in ("device-edge", "device-cloud"):
                    http.put(f"/deployment/links/{name}", json={"profile": "3g"}).raise_for_status()
                _image(http, "a red car on a road", 1024, out / "image-3g.png")
            finally:  # the user's deployment gets its links back, whatever happened
                for name in ("device-edge", "device-cloud"):
                    restore = {"profile": links[name]["profile"]}
                    http.put(f"/deployment/links/{name}", json=restore).raise_for_status()

        console.rule("[bold]4. a failover[/]: the edge is taken down; the tiers left serve the request")
        if http.post("/deployment/tiers/edge/down").is_success:
            try:
                reply = client.generate(PROMPT, max_tokens=16, temperature=0.8, seed=2)
                console.print(f"  {PROMPT}[bold]{reply.text}[/]", highlight=False)
                console.print(f"  [dim]{_route_line(reply.route.model_dump())}[/]", highlight=False)
            finally:  # the edge comes back, whatever happened
                with spinner("bringing the edge back"):
                    http.post("/deployment/tiers/edge/up").raise_for_status()
            back = client.generate(PROMPT, max_tokens=4, temperature=0.8, seed=3)
            console.print(f"  the edge is back: {_route_line(back.route.model_dump())}", highlight=False)
        else:
            console.print("  [dim]this deployment has no tiers to take down: skipped[/]")
        console.rule("[bold]5. an image edit[/]: paint the car red, a road frame repainted inside a mask")
        _edit(client, out)

        console.rule("[bold]6. a follow-up[/]: \"make it blue\" on the first image, in its context")
        blue = client.image("make it blue", context_id=first_image["context_id"], sla=IMAGE_SLA)
        (out / "image-blue.png").write_bytes(blue.png)
        done = blue.route["follow_up"]
        console.print(
            f"  {done['prompt']!r} ({', '.join(done['changes'])}), repainted on the [bold]{blue.tier}[/], "
            f"{blue.resolution} px; {1 - done['changed_share']:.0%} of the picture kept as it was "
            f"-> {out / 'image-blue.png'}", highlight=False,
        )


def run(url: str | None, key: str | None, out: Path, profile: str) -> None:
    started = time.perf_counter()
    if url:
        if not key:
            raise TierUnavailableError("TIERFLOW_URL is set without TIERFLOW_API_KEY")
        tour(url, key, out)
    else:
        with contextlib.ExitStack() as stack:
            with spinner("starting a local deployment (tierflow up)"):
                api, new_key = stack.enter_context(local_deployment(profile))
            tour(api, new_key, out)
    console.print(f"[dim]the tour took {time.perf_counter() - started:.1f} s[/]")


def env_url() -> str | None:
    return os.environ.get("TIERFLOW_URL") or None
