"""Industrial inspection (edge - cloud): cracks in pipes and walls found at the edge, hard cases in the cloud.

Runs against a running deployment (``tierflow up``; ``TIERFLOW_URL`` and ``TIERFLOW_API_KEY``, by
default the local one):

1. a camera on the line sends a stream of frames -- SIMULATED: the scene renderer draws pipes and walls,
   about half of them cracked (many faintly), and its labels are the ground truth; each frame goes through
   a SIMULATED camera (tierflow.model.scenes.camera: blur, exposure, white balance, sensor noise that
   grows at night), so some frames are hard;
2. each frame goes to ``POST /v1/inspections``: the edge's small detector answers; a frame it is unsure
   of is a hard example and goes to the cloud's larger detector (joint inference, as KubeEdge Sedna does);
3. for each crack found, the edge's language model writes a short repair note (the LM runs pinned to
   the edge; what it writes is the bundled demo LM's prose, after a note the example fills in itself);
4. it reports the share of frames closed at the edge (the seed expects about 90 %) and the accuracy
   against the renderer's labels with and without escalation.

Prints what ran where and how long it took; exits 0 when every frame was answered and escalation did
not make the answers worse.

    python examples/inspection.py [FRAMES] [--notes N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import tierflow
from tierflow.model.scenes import CRACKABLE, random_scene
from tierflow.model.scenes.camera import inspection_frame
from tierflow.runtime.image import png_bytes

OUT = Path(os.environ.get("TIERFLOW_EXAMPLE_OUT", "inspection"))
FRAME_SIDE = 256  # what the camera sends; each detector resizes to its own input
SEED = 4242  # the stream of frames (a stream the detectors were not trained on)


def frames(count: int) -> list[tuple[np.ndarray, bool, str]]:
    """``count`` SIMULATED camera frames: (pixels, cracked, what the frame shows). The scenes come
    from the stream ``[SEED, 1]``, frame ``i``'s crack contrast and camera from ``[SEED, 2, i]``."""
    rng = np.random.default_rng([SEED, 1])
    out = []
    for i in range(count):
        scene = random_scene(rng, max_objects=1, kinds=CRACKABLE)
        shown = inspection_frame(scene, FRAME_SIDE, SEED + i, np.random.default_rng([SEED, 2, i]))
        obj = scene.objects[0]
        out.append((shown.image, scene.crack, f"{obj.colour} {obj.kind} on {scene.background}"))
    return out


def where(box: list[float] | None) -> str:
    if not box:
        return "somewhere"
    x = (box[0] + box[2]) / 2
    return "on the left" if x < 0.4 else "on the right" if x > 0.6 else "in the middle"


def repair_note(client: tierflow.Client, what: str, box: list[float] | None, tier: str) -> tuple[str, float]:
    """The edge LM's note for one crack (its text, and its seconds)."""
    started = time.perf_counter()
    note = f"Repair note: a crack {where(box)} of the {what}, found by the {tier} detector. "
    made = client.generate(note, max_tokens=16, temperature=0, tier="edge")
    return note + made.text.strip().replace("\n", " "), time.perf_counter() - started


def main(count: int, notes: int) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    stream = frames(count)
    first_right = final_right = closed_at_edge = 0
    seconds: list[float] = []
    written = 0
    with tierflow.Client(timeout=120) as client:
        for i, (pixels, truth, what) in enumerate(stream):
            started = time.perf_counter()
            found = client.inspect(png_bytes(pixels))
            seconds.append(time.perf_counter() - started)
            first = found.route["first"]
            first_right += first["cracked"] == truth
            final_right += found.cracked == truth
            closed_at_edge += not found.escalated and found.tier == "edge"
            mark = "crack" if found.cracked else "ok   "
            up = f" -> cloud says {'crack' if found.cracked else 'no crack'}" if found.escalated else ""
            print(f"frame {i:3d} {what:32s} {mark} edge confidence {first['confidence']:.2f}{up}"
                  f"  ({'right' if found.cracked == truth else 'WRONG'}, {seconds[-1] * 1000:.0f} ms)")
            if found.cracked and written < notes:
                (OUT / f"crack-{i:03d}.png").write_bytes(png_bytes(pixels))
                text, spent = repair_note(client, what, found.box, found.tier)
                print(f"    edge LM ({spent:.2f} s): {text}")
                written += 1
    n = len(stream)
    print(f"\nframes: {n}, closed at the edge: {closed_at_edge / n:.1%} (the seed expects about 90 %)")
    print(f"accuracy against the renderer's labels: edge alone {first_right / n:.1%}, "
          f"with escalation to the cloud {final_right / n:.1%}")
    print(f"time per frame: median {statistics.median(seconds) * 1000:.0f} ms, "
          f"max {max(seconds) * 1000:.0f} ms")
    ok = final_right >= first_right
    print("inspection scenario: ok" if ok else "inspection scenario: escalation made the answers worse")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", nargs="?", type=int, default=60)
    parser.add_argument("--notes", type=int, default=3, help="repair notes to write (one per crack found)")
    args = parser.parse_args()
    sys.exit(main(args.frames, args.notes))
