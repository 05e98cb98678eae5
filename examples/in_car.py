"""In the car (device - edge - cloud): "paint the car in front red".

Runs against a running deployment (``tierflow up``; ``TIERFLOW_URL`` and ``TIERFLOW_API_KEY``, by
default the local one):

1. the device interprets the command (the words of the scene grammar: which object, which colour)
   and captures a road frame -- SIMULATED: the renderer draws it, and its labels give the car's
   silhouette, where a real car would run a segmenter;
2. the edit is routed by its SLA (512 px within 3 s, the quickest offer) and the car's metered
   cellular data (reported to the router once: the cloud only when nothing nearer meets the SLA): the
   roadside edge makes it, over the car's wifi (the car's links are SIMULATED: wifi to the edge, 4g to
   the cloud, set for the run and put back after; over 4g the cloud's refined 512 px takes about as
   long as the edge's);
3. "HD": the same edit at 2048 px, which only the cloud (with its refiner) makes;
4. the cloud out of reach (the device's and the edge's links to it SIMULATED offline): the basic edit
   still works, on the edge.

Prints what ran where and how long it took; exits 0 when every step worked.

    python examples/in_car.py ["paint the car in front red"]
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import tierflow
from tierflow.client.models import ImageResult
from tierflow.model.scenes import Colour, Kind, parse_prompt, render, words_of
from tierflow.runtime.image import png_bytes
from tierflow.runtime.text_to_image import touched

OUT = Path(os.environ.get("TIERFLOW_EXAMPLE_OUT", "in-car"))
FRAME_SIDE = 512


def interpret(command: str) -> tuple[Kind, Colour]:
    """The object and the colour a command names (the device's own parser, no network)."""
    words = words_of(command)
    kinds = [k for k in Kind if str(k) in words]
    colours = [c for c in Colour if str(c) in words]
    if not kinds or not colours:
        raise SystemExit(f"cannot tell which object and colour {command!r} means")
    return kinds[0], colours[0]


def capture(kind: Kind, colour: Colour) -> tuple[np.ndarray, np.ndarray]:
    """A SIMULATED camera frame with a {kind} in front (of another colour) and that object's mask."""
    other = next(c for c in (Colour.WHITE, Colour.BLUE, Colour.GREY) if c is not colour)
    frame = render(parse_prompt(f"a {other} {kind} on a road").scene, FRAME_SIDE, seed=3)
    return frame.image, frame.object_ids == 1


def edit(client: tierflow.Client, frame: np.ndarray, mask: np.ndarray, prompt: str, size: int,
         sla: dict[str, object], label: str) -> ImageResult:
    started = time.perf_counter()
    made = client.edit(png_bytes(frame), prompt, mask=png_bytes(np.dstack([mask * 255] * 3).astype(np.uint8)),
                       size=size, seed=1, sla=sla)
    wall = time.perf_counter() - started
    route = made.route
    pixels = np.asarray(Image.open(io.BytesIO(made.png)).convert("RGB"))
    path = OUT / f"{label}.png"
    path.write_bytes(made.png)
    print(f"{label}: {route['resolution']} px on the {route['tier']}"
          f"{' (refined)' if route.get('refined') else ''}{' (degraded)' if route.get('degraded') else ''}"
          f" in {wall:.2f} s (compute {route['compute_s']:.2f} s) -> {path}")
    print(f"  why: {route['decision']['reason']}")
    if pixels.shape[0] == frame.shape[0]:
        kept = ~touched(mask, frame.shape[0])
        print(f"  outside the mask: {float((pixels[kept] == frame[kept]).all(axis=1).mean()):.1%} unchanged")
    return made


def main(command: str) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    kind, colour = interpret(command)
    print(f"device: {command!r} -> repaint the {kind} {colour}")
    frame, mask = capture(kind, colour)
    (OUT / "frame.png").write_bytes(png_bytes(frame))
    prompt = f"a {colour} {kind} on a road"
    with tierflow.Client(timeout=300) as client:
        links = client.deployment()["links"]
        before = {name: links[name]["profile"] for name in ("device-edge", "device-cloud", "edge-cloud")}
        try:
            client.set_link("device-edge", "wifi")
            client.set_link("device-cloud", "4g")
            client.report_device(metered=True)  # the car's cellular data
            fast = {"max_latency": 3.0, "prefer": "latency", "offline_ok": True}
            basic = edit(client, frame, mask, prompt, FRAME_SIDE, fast, "edit-512")
            hd = edit(client, frame, mask, prompt, 2048, {"prefer": "quality", "max_latency": 60}, "edit-hd")
            for link in ("device-cloud", "edge-cloud"):
                client.set_link(link, "offline")
            offline = edit(client, frame, mask, prompt, FRAME_SIDE, fast, "edit-cloud-offline")
        finally:  # the deployment gets its links and its unmetered network back, whatever happened
            for link, profile in before.items():
                client.set_link(link, profile)
            client.report_device(metered=False)
    ok = (basic.route["tier"] == "edge" and basic.route["resolution"] == 512 and hd.route["tier"] == "cloud"
          and offline.route["tier"] != "cloud")
    print("in-car scenario: ok" if ok else "in-car scenario: a step did not run where it should")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "paint the car in front red"))
