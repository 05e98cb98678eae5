"""`tierflow up MODEL`: three node processes, the public API at the device node, real sockets.

What a user of the deployment relies on: greedy text through three tiers equals the unsplit model's,
contexts belong to whoever created them, the official `openai` package works against it, and a
tier killed in the middle of a streamed reply costs the user nothing but time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import tierflow
from tests.support.processes import tierflow_up
from tierflow.client.models import DoneEvent, TokenEvent
from tierflow.engine.images import OP_GENERATE_IMAGE
from tierflow.engine.tier_load import LOAD_EVERY_S
from tierflow.errors import (
    AuthenticationError,
    ContextForbiddenError,
    ContextNotFoundError,
    InvalidInputError,
)
from tierflow.model.registry import resolve_model
from tierflow.model.scenes import parse_prompt, render
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.text_to_image import touched
from tierflow.transport.dataplane import SyncDataPlaneClient
from tierflow.transport.messages import ORIGIN_KEY, StageRequest
from tierflow.transport.tls import load_identity

pytestmark = pytest.mark.slow

SPANS = "device=0-1,edge=2-3,cloud=4-5"
PROMPT = "def "


@dataclass
class Deployment:
    info: dict[str, object]
    process: subprocess.Popen[str]
    root: Path
    env: dict[str, str]

    @property
    def api(self) -> str:
        return str(self.info["api"])

    @property
    def key(self) -> str:
        return str(self.info["api_key"])

    def client(self, key: str | None = None) -> tierflow.Client:
        return tierflow.Client(self.api, key or self.key, timeout=60)

    def node(self, tier: str) -> dict[str, object]:
        return self.info["nodes"][tier]  # type: ignore[index, no-any-return]

    def new_key(self) -> str:
        """A key of another identity, issued the way an operator does (`tierflow token`)."""
        argv = [sys.executable, "-m", "tierflow", "token", "--store", str(self.root / "contexts.sqlite")]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=self.env, check=True)
        return str(json.loads(done.stdout)["api_key"])


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, tierflow_home: Path) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("up")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIERFLOW_HOME": str(tierflow_home)}
    routing = root / "routing.yaml"  # the deployment's routing as data: a rule and a prior, seen below
    routing.write_text("rules: {excluded: {clip: [device]}}\npriors: {image_2048: {cloud: 9.5}}\n")
    args = [
        "demo-lm",
        "--port",
        "0",
        "--spans",
        SPANS,
        "--certs",
        str(root / "pki"),
        "--profile",
        "wifi",
        "--store",
        str(root / "contexts.sqlite"),
        "--image-model",
        "demo-image",
        "--routing",
        str(routing),
    ]
    with tierflow_up(args, env) as (info, process):
        yield Deployment(info, process, root, env)


@pytest.fixture(scope="module")
def unsplit() -> CausalLM:
    return CausalLM.open(resolve_model("demo-lm"), SessionOptions(intra_op_threads=1))


def test_up_prints_the_entry_point_and_a_key_that_works(up: Deployment) -> None:
    assert set(up.info["nodes"]) == {"device", "edge", "cloud"}  # type: ignore[arg-type]
    assert up.key.startswith("tf_")
    with up.client() as client:
        assert client.health()
        assert client.models() == ["demo-lm"]


def test_greedy_through_three_processes_is_the_unsplit_models_text(up: Deployment, unsplit: CausalLM) -> None:
    expected = unsplit.generate(PROMPT, SamplingConfig.greedy(24)).text
    with up.client() as client:
        first = client.generate(PROMPT, max_tokens=24, temperature=0)
        assert first.text == expected
        assert first.route.spans == {"device": "0-1", "edge": "2-3", "cloud": "4-5"}
        assert first.route.tiers == ["device", "edge", "cloud"]
        # a follow-up continues the conversation: the tiers still hold its KV, nothing is recomputed
        follow = client.generate("\n", context_id=first.context_id, max_tokens=8, temperature=0)
        assert follow.context_id == first.context_id
        assert follow.route.cached_tokens >= first.route.prompt_tokens + 23
        shards = client.context(first.context_id).shards
        assert {tier: s.layers for tier, s in shards.items()} == {
            "device": "0-1",
            "edge": "2-3",
            "cloud": "4-5",
        }


def test_contexts_belong_to_their_creator(up: Deployment) -> None:
    with up.client() as alice:
        made = alice.generate(PROMPT, max_tokens=2, temperature=0)
        with up.client(up.new_key()) as bob, pytest.raises(ContextForbiddenError):
            bob.generate(PROMPT, context_id=made.context_id, max_tokens=2)
        with pytest.raises(ContextNotFoundError):
            alice.generate(PROMPT, context_id="ctx_" + "A" * 32, max_tokens=2)
        alice.delete_context(made.context_id)
        with pytest.raises(ContextNotFoundError):
            alice.context(made.context_id)
    with (
        tierflow.Client(up.api, "tf_not-a-key-of-this-deployment") as stranger,
        pytest.raises(AuthenticationError),
    ):
        stranger.generate(PROMPT, max_tokens=2)
    assert httpx.post(f"{up.api}/generate", json={"prompt": PROMPT}).status_code == 401
    assert httpx.get(f"{up.api}/healthz").status_code == 200  # health stays open


def test_bad_requests_are_422_naming_what_is_wrong(up: Deployment, unsplit: CausalLM) -> None:
    auth = {"Authorization": f"Bearer {up.key}"}
    too_long = httpx.post(f"{up.api}/generate", json={"prompt": "x " * 5000}, headers=auth, timeout=60)
    assert too_long.status_code == 422
    assert str(unsplit.max_seq_len) in too_long.json()["detail"]
    bad_json = httpx.post(
        f"{up.api}/generate", content=b"{not json", headers={**auth, "content-type": "application/json"}
    )
    assert bad_json.status_code == 422
    zero = httpx.post(f"{up.api}/generate", json={"prompt": PROMPT, "max_tokens": 0}, headers=auth)
    assert zero.status_code == 422


def test_an_sla_is_routed_reported_and_refused_with_the_best_offer(up: Deployment) -> None:
    auth = {"Authorization": f"Bearer {up.key}"}

    def post(body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{up.api}/generate", json={"prompt": PROMPT, "max_tokens": 4, **body},
                          headers=auth, timeout=60)

    ok = post({"sla": {"max_latency": 60, "prefer": "latency"}})
    assert ok.status_code == 200, ok.text
    decision = ok.json()["route"]["decision"]
    assert decision["tier"] == "cloud" and not decision["degraded"]  # the fixed spans reach the cloud
    assert [a["tier"] for a in decision["alternatives"]][0] == "cloud"
    assert {a["tier"] for a in decision["alternatives"] if not a["feasible"]} == {"edge"}  # no placement
    # the device offers the phone's early-exit model (tierflow up keeps it there), which a text SLA
    # without min_quality does not accept: full is asked for
    lite = [a for a in decision["alternatives"] if a["quality"] == "early_exit"]
    assert lite and lite[0]["tier"] == "device" and lite[0]["feasible"] and not lite[0]["meets_sla"]
    assert decision["sla"]["min_quality"] == "full"
    accepted = post({"sla": {"max_latency": 60, "min_quality": "early_exit", "prefer": "latency"}})
    offers = accepted.json()["route"]["decision"]["alternatives"]
    assert any(a["quality"] == "early_exit" and a["meets_sla"] for a in offers)
    unmet = post({"sla": {"max_latency": 1e-6}})
    assert unmet.status_code == 422 and unmet.json()["error"] == "SLAUnmet"
    assert re.search(r"the best is (cloud full|device early_exit) ", unmet.json()["detail"])
    bad_inputs = (
        ({"sla": {"max_latency": -1}}, "sla.max_latency"),
        ({"sla": {"speed": 1}}, "sla.speed"),
        ({"sla": {"min_resolution": 300}}, "sla.min_resolution"),
        ({"battery": {"level": 140}}, "battery.level"),
        ({"network": "pigeon"}, "network"),
    )
    for body, field in bad_inputs:
        bad = post(body)
        assert bad.status_code == 422 and field in bad.json()["detail"], (body, bad.text)
    matrix = httpx.get(f"{up.api}/routing/matrix", headers=auth).json()
    assert matrix["tasks"]["text_short"]["cloud"]["count"] >= 1  # learned from the routed request
    assert matrix["units"]["text_short"] == "s/token" and matrix["device"]["battery"] is None
    assert matrix["rules"]["excluded"] == {"clip": ["device"]}  # from --routing
    assert matrix["tasks"]["image_2048"]["cloud"]["prior_s"] == 9.5
    assert httpx.get(f"{up.api}/routing/matrix").status_code == 401
    with up.client() as client:
        assert client.report_device(metered=True)["metered"] is True
        assert client.routing_matrix()["device"]["metered"] is True
        assert client.report_device(metered=False)["metered"] is False


def test_images_come_from_the_routed_tier_through_the_openai_package(up: Deployment) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{up.api}/v1", api_key=up.key)
    answer = client.images.generate(model="demo-image", prompt="a red car", size="256x256",
                                    response_format="b64_json")
    png = base64.b64decode(answer.data[0].b64_json or "")
    assert Image.open(io.BytesIO(png)).size == (256, 256)
    auth = {"Authorization": f"Bearer {up.key}"}
    body = {"prompt": "a red car", "size": "512x512", "sla": {"max_latency": 60}, "seed": 3}
    reply = httpx.post(f"{up.api}/v1/images/generations", json=body, headers=auth, timeout=120).json()
    route = reply["route"]
    assert route["resolution"] == 512 and route["seed"] == 3 and route["failed"] == []
    assert route["decision"]["tier"] == route["tier"] and route["decision"]["task"] == "image_512"
    assert {a["tier"] for a in route["decision"]["alternatives"]} == {"device", "edge", "cloud"}
    for bad in ({"size": "100x100"}, {"size": "512x256"}, {"n": 2}, {"sla": {"min_resolution": 1024}}):
        refused = httpx.post(f"{up.api}/v1/images/generations", json={"prompt": "x", **bad}, headers=auth)
        assert refused.status_code == 422, (bad, refused.text)
    assert httpx.post(f"{up.api}/v1/images/generations", json={"prompt": "x"}).status_code == 401
    with up.client() as sdk:  # the SDK's call, and the CLI's on top of it
        made = sdk.image("a blue house", size=256, seed=5, sla={"max_latency": 60}, tier="edge")
        assert made.resolution == 256 and Image.open(io.BytesIO(made.png)).size == (256, 256)
    out = up.root / "cli.png"
    shell = subprocess.run(
        [sys.executable, "-m", "tierflow", "image", "a blue house", "--size", "256", "--seed", "5",
         "--tier", "edge", "-o", str(out), "--url", up.api, "--api-key", up.key],
        capture_output=True, text=True, timeout=120, env=up.env,
    )
    assert shell.returncode == 0, shell.stderr
    assert "256 px made on the edge" in shell.stderr
    assert out.read_bytes() == made.png  # the same seed on the same tier's model: the same image


def _png(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG")
    return buf.getvalue()


def _red_share(pixels: np.ndarray) -> float:
    """The share of ``pixels`` (N x 3) that are clearly red."""
    p = pixels.astype(int)
    return float(((p[:, 0] > p[:, 1] + 40) & (p[:, 0] > p[:, 2] + 40)).mean())


def test_an_edit_repaints_the_mask_only_through_the_openai_package_sdk_and_cli(up: Deployment) -> None:
    openai = pytest.importorskip("openai")
    frame = render(parse_prompt("a blue car on a road").scene, 256, seed=2)
    car = frame.object_ids == 1
    alpha = np.where(car, 0, 255).astype(np.uint8)  # OpenAI's mask: transparent = repaint
    mask = _png(np.dstack([frame.image, alpha]), "RGBA")
    client = openai.OpenAI(base_url=f"{up.api}/v1", api_key=up.key)
    answer = client.images.edit(image=("frame.png", _png(frame.image)), mask=("mask.png", mask),
                                prompt="a red car on a road", size="256x256", response_format="b64_json",
                                extra_body={"seed": 7})  # a seed where strength 0.8 left the car blue
    edited = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json or ""))))
    far = ~touched(car, 256)
    assert np.array_equal(edited[far], frame.image[far])  # away from the car: the caller's pixels
    assert _red_share(frame.image[car]) < 0.01
    assert _red_share(edited[car]) > 0.25  # the car is red now (its windows, wheels and lights are not)
    with up.client() as sdk:
        made = sdk.edit(_png(frame.image), "a red car on a road", mask=mask, seed=4, tier="edge")
        assert made.route["tier"] == "edge" and made.resolution == 256
        matrix = httpx.get(f"{up.api}/routing/matrix", headers={"Authorization": f"Bearer {up.key}"}).json()
        assert matrix["tasks"]["image_edit"]["edge"]["count"] >= 1  # an edit is learned in its own row
        for bad in ({"mask": _png(alpha[:128, :128], "L")}, {"strength": 0.0}, {"size": 100}):
            with pytest.raises(InvalidInputError):
                sdk.edit(_png(frame.image), "a red car", **bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="square"):
            sdk.edit(_png(frame.image[:128]), "a red car")
        with pytest.raises(InvalidInputError, match="readable"):
            sdk.edit(b"not a picture", "a red car")
    picture, out = up.root / "frame.png", up.root / "edited.png"
    picture.write_bytes(_png(frame.image))
    shell = subprocess.run(
        [sys.executable, "-m", "tierflow", "image", "a red car on a road", "--edit", str(picture),
         "--strength", "0.7", "--size", "256", "--seed", "4", "-o", str(out), "--url", up.api,
         "--api-key", up.key],
        capture_output=True, text=True, timeout=120, env=up.env,
    )
    assert shell.returncode == 0, shell.stderr
    assert Image.open(out).size == (256, 256)


def _pixels(png: bytes, side: int | None = None) -> np.ndarray:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return np.asarray(img if side is None else img.resize((side, side), Image.Resampling.BOX))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a.astype(float) - b) ** 2), 1e-9)))


def _blue_share(pixels: np.ndarray) -> float:
    p = pixels.astype(int)
    return float(((p[..., 2] > p[..., 0] + 40) & (p[..., 2] > p[..., 1] + 20)).mean())


def test_a_follow_up_changes_the_last_picture_and_keeps_the_rest(up: Deployment) -> None:
    with up.client() as sdk:
        red = sdk.image("a red car on a road", size=256, seed=11, tier="edge")
        assert red.context_id and red.route.get("follow_up") is None
        blue = sdk.image("make it blue", context_id=red.context_id, tier="edge")
        assert blue.context_id == red.context_id and blue.resolution == 256  # the last picture's size
        follow = blue.route["follow_up"]
        assert follow["prompt"] == "a blue car on a road"
        assert follow["changes"] == ["colour of the car: red -> blue"]
        before, after = _pixels(red.png), _pixels(blue.png)
        same = (after == before).all(axis=2)
        assert 0.4 < same.mean() < 1.0  # most of the picture is the last one's own pixels, exactly
        assert 1 - same.mean() <= follow["changed_share"] + 1e-6  # and it says how much it took anew
        changed = ~same
        assert _red_share(before[changed]) > _red_share(after[changed]) + 0.1  # where it changed: red...
        assert _blue_share(after[changed]) > _blue_share(before[changed]) + 0.1  # ... became blue
        larger = sdk.image("higher resolution", context_id=red.context_id, tier="edge")
        assert larger.resolution == 512 and larger.route["follow_up"]["upscaled_from"] == 256
        assert larger.route["follow_up"]["prompt"] == "a blue car on a road"  # the scene so far
        other = sdk.image("a blue car on a road", size=512, seed=12, tier="edge")  # another seed: the control
        shrunk = _pixels(larger.png, 256)
        assert _psnr(shrunk, after) > _psnr(_pixels(other.png, 256), after) + 4  # the same picture, larger
        # contexts of pictures and of conversations do not mix; the owner's rules are a conversation's
        with pytest.raises(InvalidInputError, match="holds a picture, not a conversation"):
            sdk.generate(PROMPT, context_id=red.context_id, max_tokens=2)
        text = sdk.generate(PROMPT, max_tokens=2, temperature=0)
        with pytest.raises(InvalidInputError, match="is a conversation, not a picture"):
            sdk.image("make it blue", context_id=text.context_id)
        with pytest.raises(ContextNotFoundError):
            sdk.image("make it blue", context_id="ctx_" + "B" * 32)
        with up.client(up.new_key()) as bob, pytest.raises(ContextForbiddenError):
            bob.image("make it green", context_id=red.context_id)
        # an edit's result is kept too; a follow-up to it edits that picture (no prompt and seed make it)
        frame = render(parse_prompt("a white van on a road").scene, 256, seed=2)
        edited = sdk.edit(_png(frame.image), "a white van on a road at night", seed=3, tier="edge")
        night = sdk.image("make it red", context_id=edited.context_id, tier="edge")
        assert night.route["follow_up"]["method"] == "edited the last picture"
        assert night.route["follow_up"]["prompt"] == "a red van on a road at night"


def test_inspection_answers_at_the_edge_and_refuses_bad_frames(up: Deployment) -> None:
    cracked = render(parse_prompt("a grey pipe with a crack on grass").scene, 256, seed=5)
    clean = render(parse_prompt("a grey pipe on grass").scene, 256, seed=5)
    with up.client() as sdk:
        found = sdk.inspect(_png(cracked.image), escalate_below=0.5)  # 0.5: no answer is unsure
        assert found.cracked and found.tier == "edge" and not found.escalated and found.box is not None
        assert not sdk.inspect(_png(clean.image), escalate_below=0.5).cracked
        matrix = httpx.get(f"{up.api}/routing/matrix", headers={"Authorization": f"Bearer {up.key}"}).json()
        assert matrix["tasks"]["crack_detect"]["edge"]["count"] >= 2  # the matrix learned the edge's time
        recent = [r for r in sdk.deployment()["recent"] if r["kind"] == "inspection"][:2]
        assert [(r["tier"], r["cracked"]) for r in recent] == [("edge", False), ("edge", True)]  # listed
        assert set(recent[0]["compute_s"]) == {"edge"} and recent[0]["events"] == []
    auth = {"Authorization": f"Bearer {up.key}"}
    frame = base64.b64encode(_png(cracked.image)).decode()
    for bad, says in (({"image": "%%%"}, "base64"), ({"image": base64.b64encode(b"no").decode()}, "readable"),
                      ({"image": frame, "escalate_below": 0.3}, "escalate_below")):
        refused = httpx.post(f"{up.api}/v1/inspections", json=bad, headers=auth, timeout=60)
        assert refused.status_code == 422 and says in refused.text, refused.text
    assert httpx.post(f"{up.api}/v1/inspections", json={"image": frame}, timeout=60).status_code == 401


def test_another_callers_work_on_the_edge_is_its_load_and_the_entry_points_own_is_not(
    up: Deployment,
) -> None:
    auth = {"Authorization": f"Bearer {up.key}"}

    def edge_load() -> float:
        matrix = httpx.get(f"{up.api}/routing/matrix", headers=auth, timeout=30).json()
        return float(matrix["tiers"]["edge"]["load"])

    with up.client() as sdk:  # the entry point's own images on the edge, over two of its load polls
        until = time.monotonic() + 2.5 * LOAD_EVERY_S
        while time.monotonic() < until:
            assert sdk.image("a red car", size=256, tier="edge").tier == "edge"
            assert edge_load() == 0.0
    # another car reaches the same edge box: its images are load for this entry point
    other = SyncDataPlaneClient(
        str(up.node("edge")["data_plane"]), load_identity(up.root / "pki", "device"), server_name="edge"
    ).connect()
    try:
        until = time.monotonic() + 10 * LOAD_EVERY_S
        seen = 0.0
        while seen == 0.0 and time.monotonic() < until:
            image = StageRequest(OP_GENERATE_IMAGE, meta={"resolution": 256, ORIGIN_KEY: "another-car"})
            other.call(image).raise_for_error("edge")
            seen = edge_load()
    finally:
        other.close()
    assert 0.0 < seen < 1.0
    with up.client() as sdk:  # and the router says why the edge's prediction grew
        offers = sdk.image("a red car", size=256).route["decision"]["alternatives"]
    edge = [a for a in offers if a["tier"] == "edge" and a["feasible"]]
    assert edge and any("busy with other work" in a["why"] for a in edge)


def test_the_openai_package_chats_streams_and_reuses_the_prefix(up: Deployment) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{up.api}/v1", api_key=up.key)
    assert [m.id for m in client.models.list()] == ["demo-lm"]
    question = [{"role": "user", "content": "What does len do?"}]
    reply = client.chat.completions.create(model="demo-lm", messages=question, max_tokens=12, temperature=0)
    answer = reply.choices[0].message.content
    assert answer and reply.usage.completion_tokens > 0
    streamed = client.chat.completions.create(
        model="demo-lm", messages=question, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer
    # the next turn extends that conversation: its KV shards are reused, as vLLM's prefix caching does
    turn = [*question, {"role": "assistant", "content": answer}, {"role": "user", "content": "And str?"}]
    second = client.chat.completions.create(model="demo-lm", messages=turn, max_tokens=8, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= reply.usage.prompt_tokens
    completion = client.completions.create(model="demo-lm", prompt=PROMPT, max_tokens=6, temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens == 6
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{up.api}/v1", api_key="tf_wrong").models.list()


def test_a_tier_killed_mid_stream_the_reply_completes_with_the_same_tokens(
    up: Deployment, unsplit: CausalLM
) -> None:  # last in this module: the deployment goes on without its edge
    expected = unsplit.generate(PROMPT, SamplingConfig.greedy(48)).text
    pieces: list[str] = []
    done: DoneEvent | None = None
    with up.client() as client:
        for event in client.stream(PROMPT, max_tokens=48, temperature=0):
            if isinstance(event, TokenEvent):
                pieces.append(event.text)
                if len(pieces) == 4:
                    os.kill(int(up.node("edge")["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
            elif isinstance(event, DoneEvent):
                done = event
        assert done is not None
        assert "".join(pieces) == done.result.text == expected
        route = done.result.route
        assert any(e.get("event") == "failover" and e.get("lost") == "edge" for e in route.events), route
        assert "edge" not in route.spans and route.spans  # the edge's layers now run elsewhere
        # the context survives: a follow-up continues it on the tiers left
        follow = client.generate("\n", context_id=done.result.context_id, max_tokens=4, temperature=0)
        assert "edge" not in follow.route.tiers


def test_the_dashboard_state_and_the_deployment_controls(up: Deployment) -> None:
    """Runs last: the edge was killed above; the controls bring it back, change a link, stop the cloud."""
    auth = {"Authorization": f"Bearer {up.key}"}
    assert str(up.info["dashboard"]).endswith(f"/dashboard#key={up.key}")
    page = httpx.get(f"{up.api}/dashboard")
    assert page.status_code == 200 and "/dashboard/static/dashboard.js" in page.text
    assert httpx.get(f"{up.api}/dashboard/state").status_code == 401

    def state() -> dict[str, Any]:
        answer = httpx.get(f"{up.api}/dashboard/state", headers=auth, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    before = state()
    assert set(before["tiers"]) == {"device", "edge", "cloud"}
    assert before["tiers"]["edge"]["process"]["alive"] is False  # killed by the failover test
    assert before["links"]["device-edge"]["profile"] == "wifi" and before["controls"]["links"]
    assert {r["kind"] for r in before["recent"]} == {"text", "image", "inspection"}  # all served above
    assert before["contexts"] and before["plan"]["spans"]
    revived = httpx.post(f"{up.api}/deployment/tiers/edge/up", headers=auth, timeout=120)
    assert revived.status_code == 200 and revived.json()["tiers"]["edge"]["available"] is True
    assert revived.json()["tiers"]["edge"]["process"]["alive"] is True
    link = f"{up.api}/deployment/links/device-edge"
    slower = httpx.put(link, json={"profile": "3g"}, headers=auth, timeout=60)
    assert slower.status_code == 200 and slower.json()["links"]["device-edge"]["profile"] == "3g"
    assert state()["links"]["device-edge"]["profile"] == "3g"  # the emulator itself changed
    bad = httpx.put(link, json={"profile": "7g"}, headers=auth)
    shell = subprocess.run(
        [sys.executable, "-m", "tierflow", "link", "set", "edge-cloud", "3g", "--url", up.api,
         "--api-key", up.key],
        capture_output=True, text=True, timeout=60, env=up.env,
    )
    assert shell.returncode == 0 and shell.stdout.startswith("edge-cloud: 3g"), shell.stderr
    assert state()["links"]["edge-cloud"]["profile"] == "3g"
    httpx.put(f"{up.api}/deployment/links/edge-cloud", json={"profile": "backhaul"}, headers=auth, timeout=60)
    assert bad.status_code == 422 and "7g" in bad.json()["detail"]
    assert httpx.post(f"{up.api}/deployment/tiers/device/down", headers=auth).status_code == 422
    down = httpx.post(f"{up.api}/deployment/tiers/cloud/down", headers=auth, timeout=60)
    assert down.status_code == 200 and down.json()["tiers"]["cloud"]["available"] is False
    with up.client() as client:  # the tiers left serve the conversation
        reply = client.generate(PROMPT, max_tokens=4, temperature=0)
        assert "cloud" not in reply.route.spans
    up_again = httpx.post(f"{up.api}/deployment/tiers/cloud/up", headers=auth, timeout=120)
    assert up_again.status_code == 200 and up_again.json()["tiers"]["cloud"]["available"] is True
    httpx.put(f"{up.api}/deployment/links/device-edge", json={"profile": "wifi"}, headers=auth, timeout=60)
