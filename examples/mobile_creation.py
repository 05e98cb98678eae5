"""Mobile creation (device - cloud): a clip whose size and length follow the link, chosen by the router.

Runs against a running deployment (``tierflow up``; ``TIERFLOW_URL`` and ``TIERFLOW_API_KEY``, by
default the local one). The phone reaches the cloud over its own link; the edge is out of the picture
(its link SIMULATED offline for the run):

1. on a poor link (the device-cloud link SIMULATED at 2g) the user asks for a clip of up to 16 frames
   at 512 px within a latency budget: the router makes what fits, a smaller clip (the phone's own, or
   a shorter or smaller one from the cloud);
2. on a good link (wifi) the same request: the router makes a longer, larger clip in the same budget;
3. the links are put back as they were.

Prints what ran where and how long it took; exits 0 when the good link's clip is larger (frames x
area) than the poor link's and both came within their budget.

    python examples/mobile_creation.py ["a red car on a road at night"]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import tierflow
from tierflow.client.models import ClipResult

OUT = Path(os.environ.get("TIERFLOW_EXAMPLE_OUT", "mobile-creation"))
BUDGET_S = 30.0  # the user's patience for one clip
ASK = {"frames": 16, "size": 512}


def clip(client: tierflow.Client, prompt: str, label: str) -> tuple[ClipResult, float]:
    started = time.perf_counter()
    made = client.clip(prompt, frames=ASK["frames"], size=ASK["size"], seed=11,
                       sla={"max_latency": BUDGET_S, "offline_ok": True, "min_resolution": 256})
    wall = time.perf_counter() - started
    path = OUT / f"{label}.gif"
    path.write_bytes(made.gif)
    route = made.route
    print(f"{label}: {made.frames} frames at {made.resolution} px on the {made.tier} in {wall:.1f} s"
          f" ({len(made.gif) / 1024:.0f} KiB){' (degraded)' if route.get('degraded') else ''} -> {path}")
    reason = (route.get("decision") or {}).get("reason")
    if reason:
        print(f"  why: {reason}")
    return made, wall


def main(prompt: str) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tierflow.Client(timeout=300) as client:
        links = client.deployment()["links"]
        before = {name: links[name]["profile"] for name in ("device-edge", "device-cloud")}
        try:
            client.set_link("device-edge", "offline")  # device - cloud only
            client.set_link("device-cloud", "2g")
            poor, poor_s = clip(client, prompt, "clip-2g")
            client.set_link("device-cloud", "wifi")
            good, good_s = clip(client, prompt, "clip-wifi")
        finally:  # the deployment gets its links back, whatever happened
            for name, profile in before.items():
                client.set_link(name, profile)
    size = {label: c.frames * c.resolution**2 for label, c in (("2g", poor), ("wifi", good))}
    print(f"frames x area: 2g {size['2g']:,}, wifi {size['wifi']:,} ({size['wifi'] / size['2g']:.1f}x)")
    ok = size["wifi"] > size["2g"] and max(poor_s, good_s) <= BUDGET_S * 1.5
    print(f"mobile-creation scenario: {'ok' if ok else 'the clips did not follow the link'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "a red car on a road at night"))
