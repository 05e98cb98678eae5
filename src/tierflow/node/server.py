"""A tier node: its model on ONNX Runtime, served over the mTLS data plane and a FastAPI control plane.

Both planes run on one asyncio loop; ONNX Runtime work runs in worker threads
so a long stage never blocks the streams of other peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI

from tierflow.api.app import mount as mount_api
from tierflow.api.routes import APIState
from tierflow.engine.images import (
    CLIP_GIF,
    IMAGE_INFO_KEY,
    IMAGE_PNG,
    OP_GENERATE_CLIP,
    OP_GENERATE_IMAGE,
    OP_INFO,
    ImageCapability,
    TieredImages,
    bytes_tensor,
    edit_of,
    png_tensor,
    tensor_bytes,
)
from tierflow.engine.inspection import (
    DETECT_IMAGE,
    DETECTOR_INFO_KEY,
    OP_DETECT_CRACKS,
    TieredDetectors,
    detection_meta,
)
from tierflow.engine.lm_hop import LM_OPS, LMHop
from tierflow.engine.tier_load import OP_LOAD, OriginPeers, TierLoads, WorkMeter
from tierflow.errors import InvalidInputError, ModelNotFoundError, UnsupportedModelError
from tierflow.model import metadata as md
from tierflow.model.registry import resolve_model
from tierflow.node.config import NodeConfig, not_an_image_generator, parse_hostport
from tierflow.node.control import NodeMetrics, NodeState, create_app
from tierflow.node.entry import entry_point
from tierflow.node.executor import NodeExecutor, load_node_model
from tierflow.runtime.crack_detector import CrackDetector
from tierflow.runtime.image_result import read_png
from tierflow.runtime.lm import SamplingConfig
from tierflow.runtime.loader import default_resolution
from tierflow.runtime.session import SessionOptions
from tierflow.runtime.slowdown import SimulatedSlowdown
from tierflow.transport.dataplane import DataPlaneServer, error_code_for, failure_for
from tierflow.transport.dataplane_metrics import DataPlaneMetrics
from tierflow.transport.lane import DATA_PLANE_PORT_KEY, LANE_PORT_KEY, Lanes, LaneServer
from tierflow.transport.messages import (
    ORIGIN_KEY,
    MetaValue,
    PeerInfo,
    StageRequest,
    StageResponse,
)
from tierflow.transport.peers import PeerClients, Peers
from tierflow.transport.route import (
    COMPUTE_PREFIX,
    RETURN_KEY,
    ROUTE_KEY,
    decode_names,
    decode_route,
    encode_names,
    encode_route,
)
from tierflow.transport.tls import load_identity
from tierflow.types import ModelKind, Tier

# Operations a node answers on the data plane (OP_GENERATE_IMAGE and OP_INFO: engine/images.py, whence
# the entry point sends them).
OP_RUN = "run"  # compute request.outputs from request.inputs (a stage of the node's model)
OP_GENERATE = "generate"  # a whole LM generation (the cloud proxy's path); prompt and options in meta
# what a node's work meter counts whole (a split stage or an LM step counts only its own compute, not
# the wait on the tiers after it: _run and LMHop)
COMPUTE_OPS = frozenset({OP_GENERATE, OP_GENERATE_IMAGE, OP_GENERATE_CLIP, OP_DETECT_CRACKS})


def open_image_executor(config: NodeConfig) -> NodeExecutor | None:
    """The node's second model, an image generator (``config.image_model``), with the node's session
    options and SIMULATED slowdown; None when none is set. Another kind of model is refused."""
    if config.image_model is None:
        return None
    data, label = load_node_model(config.image_model, config.tier.value, config.image_target)
    executor = NodeExecutor(
        data, label, SessionOptions(intra_op_threads=config.threads), slowdown=config.slowdown
    )
    if executor.image is None:
        kind = ModelKind.CAUSAL_LM if executor.is_lm else md.kind(executor.proto) or ModelKind.GENERIC
        raise not_an_image_generator(config.image_model, kind)
    return executor


def open_detector(config: NodeConfig) -> CrackDetector | None:
    """The node's crack detector (``config.detector``, a file or a bundled name); None when none is set."""
    if config.detector is None:
        return None
    return CrackDetector.open(resolve_model(config.detector), threads=max(config.threads, 1))


class NodeServer:
    """``peers``: how the node reaches its next tiers (default: the data plane to ``config.peers``)."""

    def __init__(self, config: NodeConfig, peers: Peers | None = None) -> None:
        self.config = config
        model_bytes, label = load_node_model(config.model, config.tier.value, config.target)
        executor = NodeExecutor(
            model_bytes, label, SessionOptions(intra_op_threads=config.threads), slowdown=config.slowdown
        )
        self.image_executor = open_image_executor(config)
        self.detector = open_detector(config)
        self._detector_slow = SimulatedSlowdown(config.slowdown)
        self.dp_metrics = DataPlaneMetrics()
        self.state = NodeState(
            config,
            executor,
            NodeMetrics(),
            extra_registries=[self.dp_metrics.registry],
            image_executor=self.image_executor,
        )
        self.identity = load_identity(config.certs, config.cert_name)
        self.data_plane = DataPlaneServer(self.identity, self.handle, metrics=self.dp_metrics)
        # this node's compute by origin (the entry point a request is for): each tier's load
        # (engine/tier_load.py)
        self.origin = f"{config.tier.value}-{secrets.token_hex(4)}"
        self.meter = WorkMeter(self.origin)
        self._loads_task: asyncio.Task[None] | None = None
        self.peers: Peers = OriginPeers(
            peers if peers is not None else PeerClients(self.identity, config.peers, self.dp_metrics),
            self.origin,
        )
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.http_address: str | None = None
        self.lm_hop: LMHop | None = None
        self.lane_server: LaneServer | None = None
        self.api: APIState | None = None
        if executor.is_lm:
            # lanes need real peers (not a test's in-process fake) and may be switched off (a second port)
            real_peers = peers is None and config.lanes
            poll_s = config.lane_poll_ms / 1000
            lanes = Lanes(self.identity, config.peers, self.origin, poll_s=poll_s) if real_peers else None
            self.lm_hop = LMHop(
                executor.proto,
                config.tier.value,
                self.peers,
                options=SessionOptions(intra_op_threads=config.threads),
                slowdown=config.slowdown,
                kv_capacity_bytes=int(config.kv_mib * 2**20),
                memory_bytes=int(config.memory_mib * 2**20) if config.memory_mib else None,
                meter=self.meter,
                lanes=lanes,
            )
            if config.lanes:
                self.lane_server = LaneServer(
                    self.identity, self._lane_step, on_sent=self.lm_hop.kv.erase_superseded, poll_s=poll_s
                )
            if config.tier is Tier.DEVICE and config.store:
                images = TieredImages(self.image_executor, self.lm_hop.peers, meter=self.meter)
                detectors = TieredDetectors(self.detector, self.lm_hop.peers, meter=self.meter)
                self.api = entry_point(config, self.lm_hop, label, images=images, detectors=detectors)

    @property
    def executor(self) -> NodeExecutor:
        return self.state.executor

    @property
    def image_runner(self) -> NodeExecutor:
        """What answers ``generate_image``: the image model when the node has one, else its main model."""
        return self.image_executor or self.executor

    def _serving(self, op: str) -> NodeExecutor:
        return self.image_runner if op in (OP_GENERATE_IMAGE, OP_GENERATE_CLIP) else self.executor

    async def handle(self, request: StageRequest, peer: PeerInfo) -> StageResponse:
        started = time.perf_counter()
        try:
            serving = self._serving(request.op)
            if request.model and request.model != serving.model_id:
                raise ModelNotFoundError(
                    f"this {self.config.tier.value} node serves model {serving.model_id}, "
                    f"not {request.model}"
                )
            request.meta.setdefault(ORIGIN_KEY, peer.name)  # a caller that names none is its own origin
            if request.op in COMPUTE_OPS:
                with self.meter.busy(str(request.meta[ORIGIN_KEY])):
                    response = await self._dispatch(request)
            else:
                response = await self._dispatch(request)
            status = "ok"
        except Exception as exc:  # every failure becomes a typed response; the stream keeps working
            status = error_code_for(exc)
            response = failure_for(request.request_id, exc)
        self.state.metrics.requests.labels(request.op, status).inc()
        self.state.metrics.stage_seconds.labels(request.op).observe(time.perf_counter() - started)
        return response

    async def _dispatch(self, request: StageRequest) -> StageResponse:
        if request.op in LM_OPS and self.lm_hop is not None:
            return await self.lm_hop.handle(request)
        if request.op == OP_RUN:
            return await self._run(request)
        if request.op == OP_GENERATE_IMAGE:
            meta = request.meta
            images = self.image_runner
            image = await asyncio.to_thread(
                images.generate_image,
                str(meta["prompt"]) if "prompt" in meta else None,
                int(meta.get("resolution", default_resolution(images.max_resolution))),
                bool(meta["refine"]) if "refine" in meta else None,  # None: the model refines if it can
                int(meta["seed"]) if "seed" in meta else None,
                edit_of(request),
            )
            return StageResponse(
                request.request_id,
                outputs={IMAGE_PNG: png_tensor(image.pixels)},
                meta={
                    "seed": image.seed,
                    "refined": image.refined,
                    "provider": image.provider,
                    "elapsed_s": image.elapsed_s,
                    "tier": self.config.tier.value,
                    "ignored_words": json.dumps(list(image.ignored_words)),
                    "stages": json.dumps(image.stages),
                },
            )
        if request.op == OP_GENERATE_CLIP:
            meta = request.meta
            clip = await asyncio.to_thread(
                self.image_runner.generate_clip,
                str(meta["prompt"]) if "prompt" in meta else None,
                int(meta["frames"]),
                int(meta["resolution"]),
                int(meta["seed"]) if "seed" in meta else None,
                float(meta.get("fps", 8.0)),
            )
            gif = clip.to_gif_bytes()
            return StageResponse(
                request.request_id,
                outputs={CLIP_GIF: bytes_tensor(gif)},
                meta={"seed": clip.seed, "frames": len(clip.frames), "elapsed_s": clip.elapsed_s,
                      "tier": self.config.tier.value},
            )
        if request.op == OP_DETECT_CRACKS:
            return await asyncio.to_thread(self._detect, request)
        if request.op == OP_GENERATE:
            meta = request.meta
            default = SamplingConfig()  # what a missing option means: the default decoding
            config = SamplingConfig(
                max_new_tokens=int(meta.get("max_tokens", 48)),
                temperature=float(meta.get("temperature", default.temperature)),
                top_k=int(meta.get("top_k", default.top_k)),
                top_p=float(meta.get("top_p", default.top_p)),
                repeat_penalty=float(meta.get("repeat_penalty", default.repeat_penalty)),
                repeat_last_n=int(meta.get("repeat_last_n", default.repeat_last_n)),
                seed=int(meta["seed"]) if "seed" in meta else None,
                stop_token_ids=tuple(json.loads(str(meta.get("stop_token_ids", "[]")))),
            )
            out = await asyncio.to_thread(self.executor.generate, str(meta.get("prompt", "")), config)
            return StageResponse(
                request.request_id,
                meta={
                    "text": str(out["text"]),
                    "new_ids": json.dumps(out["new_ids"]),
                    "provider": str(out["provider"]),
                    "tokens_per_s": float(out["tokens_per_s"]),  # type: ignore[arg-type]
                    "tier": self.config.tier.value,
                },
            )
        if request.op == OP_INFO:
            return StageResponse(request.request_id, meta=self.info())
        if request.op == OP_LOAD:
            return StageResponse(request.request_id, meta=self.meter.report())
        raise UnsupportedModelError(
            f"unknown operation '{request.op}' "
            "(known: run, generate, generate_image, generate_clip, detect_cracks, info, load)"
        )

    def _detect(self, request: StageRequest) -> StageResponse:
        """One frame through the node's crack detector (a worker thread: it sleeps when SIMULATED slow)."""
        if self.detector is None:  # a model this node lacks: the entry point asks the next tier
            raise ModelNotFoundError(f"this {self.config.tier.value} node serves no crack detector")
        if DETECT_IMAGE not in request.inputs:
            raise InvalidInputError(f"detect_cracks needs the frame as input {DETECT_IMAGE!r}")
        started = time.perf_counter()
        frame = read_png(tensor_bytes(request.inputs[DETECT_IMAGE], "the frame"), "the frame")
        found = self.detector.detect(frame)
        seconds = self._detector_slow.stretch(("detect_cracks",), started)
        return StageResponse(request.request_id, meta=detection_meta(found, self.config.tier.value, seconds))

    async def _run(self, request: StageRequest) -> StageResponse:
        """Compute this hop's stage, then forward along the route (if any) and merge what comes back."""
        route = decode_route(request.meta)
        wanted = decode_names(request.meta, RETURN_KEY)
        tier = self.config.tier.value
        meta: dict[str, MetaValue] = {}
        outputs: dict[str, np.ndarray] = {}
        if request.outputs or not route:  # no outputs but a route: this tier only relays
            names = request.outputs or self.executor.stages.cutter.graph_outputs  # none named: all outputs
            with self.meter.busy(str(request.meta[ORIGIN_KEY])):
                outputs = await asyncio.to_thread(self.executor.run_stage, request.inputs, names)
            meta[f"{COMPUTE_PREFIX}{tier}"] = self.executor.stats[",".join(names)].last_s
        available = {**request.inputs, **outputs}
        if not route:
            returned = {n: outputs[n] for n in (wanted or list(outputs)) if n in outputs}
            return StageResponse(
                request.request_id, outputs=returned, meta=meta, quant=request.response_quant or request.quant
            )
        hop, rest = route[0], route[1:]
        needed = self.executor.stages.cutter.needed_along([h.outputs for h in route], available)
        forwarded = StageRequest(
            OP_RUN,
            inputs={n: available[n] for n in needed},
            outputs=list(hop.outputs),
            meta={ROUTE_KEY: encode_route(rest), RETURN_KEY: encode_names(wanted),
                  ORIGIN_KEY: request.meta[ORIGIN_KEY]},
            quant=request.quant,
            response_quant=request.response_quant,
        )
        reply = await self.peers.call(hop.peer, forwarded)
        merged = {n: available[n] for n in wanted if n in outputs}
        merged.update(reply.outputs)
        meta.update({k: v for k, v in reply.meta.items() if k.startswith(COMPUTE_PREFIX)})
        return StageResponse(
            request.request_id, outputs=merged, meta=meta, quant=request.response_quant or request.quant
        )

    def _lane_step(self, request: StageRequest, peer: PeerInfo) -> StageResponse:
        """A decode step from a peer's lane (transport/lane.py), on the lane's thread."""
        assert self.lm_hop is not None
        request.meta.setdefault(ORIGIN_KEY, peer.name)  # as handle() does for the data plane
        status = "ok"
        try:
            return self.lm_hop.step_blocking(request)
        except Exception as exc:
            status = error_code_for(exc)
            raise  # the lane answers it as the data plane would (error code and message)
        finally:
            self.state.metrics.requests.labels(request.op, status).inc()

    def info(self) -> dict[str, Any]:
        ex = self.executor
        info: dict[str, Any] = {
            "tier": self.config.tier.value,
            "model_id": ex.model_id,
            "provider": ex.provider,
            "stages": json.dumps({k: vars(v) for k, v in ex.stats.items()}),
        }
        if self.lane_server is not None and self.lane_server.port is not None:
            info[LANE_PORT_KEY] = self.lane_server.port
            info[DATA_PLANE_PORT_KEY] = self.data_plane.port
        if self.image_runner.image is not None:  # what generate_image runs here (TieredImages reads it)
            info[IMAGE_INFO_KEY] = ImageCapability.of(self.image_runner).encode()
        if self.detector is not None:
            info[DETECTOR_INFO_KEY] = self.detector.variant
        return info

    async def start(self) -> dict[str, str]:
        """Bind both planes; return their addresses."""
        host, _ = parse_hostport(self.config.listen)
        port = await self.data_plane.start(self.config.listen)
        self.state.data_plane_address = f"{host}:{port}"
        if self.lane_server is not None and self.lm_hop is not None:
            self.lm_hop.loop = asyncio.get_running_loop()
            self.lane_server.start(host)
        if self.api is not None:
            await self.api.conversations.lm.start()  # probe the tiers, plan the layer spans
            if self.api.routed_images is not None:  # each tier's image model, measured once
                await self.api.routed_images.capabilities()
            lite = self.api.conversations.early_exit
            if lite is not None:  # its speed, measured once, off the event loop
                await asyncio.to_thread(lite.speed)
            self.api.conversations.start_purging()
            loads = TierLoads(self.api.conversations.router.matrix, self.meter, self.peers, self.origin)
            self._loads_task = asyncio.create_task(loads.watch())
        http_host, http_port = parse_hostport(self.config.http)
        self._http = _ControlServer(
            uvicorn.Config(self._app(), host=http_host, port=http_port, log_level="warning", lifespan="off")
        )
        self._http_task = asyncio.create_task(self._http.serve())
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # surfaces the bind error
                raise OSError(f"control plane could not start on {self.config.http}")
            await asyncio.sleep(0.01)
        bound = self._http.servers[0].sockets[0].getsockname()[1]
        self.http_address = f"{http_host}:{bound}"
        self.state.ready = True
        return {"data_plane": self.state.data_plane_address, "http": self.http_address}

    def _app(self) -> FastAPI:
        app = create_app(self.state)
        return mount_api(app, self.api) if self.api is not None else app

    async def stop(self) -> None:
        self.state.ready = False
        if self._loads_task is not None:
            self._loads_task.cancel()
        if self.api is not None:
            await self.api.conversations.stop()
            self.api.store.close()
        if self.lane_server is not None:
            self.lane_server.stop()
        if self.lm_hop is not None:
            if self.lm_hop.lanes is not None:
                await self.lm_hop.lanes.close()
            self.lm_hop.kv.clear()
        await self.peers.close()
        await self.data_plane.stop()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await self._http_task


class _ControlServer(uvicorn.Server):
    """uvicorn without its own SIGINT / SIGTERM handlers: the process's signals belong to whoever runs
    the node (``tierflow node`` stops it through :func:`serve`'s ``stop``). uvicorn's would stop only the
    control plane, then re-raise the signal -- a no-op in a process that inherited SIGINT ignored."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: NodeConfig, stop: Callable[[], Awaitable[object]] | None = None) -> None:
    """Run a node until ``stop()`` returns (default: until cancelled), then shut it down cleanly.

    Prints one JSON line with its addresses once it is ready.
    """
    node = NodeServer(config)
    addresses = await node.start()
    sys.stdout.write(
        json.dumps(
            {
                "tier": config.tier.value,
                "model_id": node.executor.model_id,
                "provider": node.executor.provider,
                "image_model_id": node.image_executor.model_id if node.image_executor else None,
                **addresses,
            }
        )
        + "\n"
    )
    sys.stdout.flush()
    try:
        await (stop() if stop is not None else asyncio.Event().wait())
    finally:
        await node.stop()
