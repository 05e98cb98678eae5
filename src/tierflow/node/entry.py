"""The entry point of a deployment: the device node's conversations, the store and the layer plan."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from tierflow.api.deployment_client import TOKEN_ENV, DeploymentClient
from tierflow.api.routes import APIState
from tierflow.context.factory import open_store
from tierflow.engine.conversations import Conversations
from tierflow.engine.early_exit import EarlyExitLM
from tierflow.engine.image_contexts import ImageContexts
from tierflow.engine.image_routing import RoutedImages
from tierflow.engine.images import TieredImages
from tierflow.engine.inspection import TieredDetectors
from tierflow.engine.lm_hop import LMHop
from tierflow.engine.routing import EntryRouter
from tierflow.engine.sharded import ShardedLM, parse_spans
from tierflow.errors import ConfigError, InvalidModelError
from tierflow.model import metadata as md
from tierflow.model.tokenizer import Tokenizer
from tierflow.node.config import NodeConfig
from tierflow.node.executor import load_node_model
from tierflow.router.config import RoutingConfig
from tierflow.runtime.session import SessionOptions
from tierflow.types.links import LinkProfile, get_profile
from tierflow.types.tiers import Tier


def link_estimates(links: dict[str, str]) -> dict[frozenset[Tier], LinkProfile]:
    """``{"device-edge": "wifi"}`` as planning estimates per pair of tiers."""
    out: dict[frozenset[Tier], LinkProfile] = {}
    for pair, profile in links.items():
        a, _, b = pair.partition("-")
        try:
            out[frozenset((Tier(a), Tier(b)))] = get_profile(profile)
        except ValueError:
            raise ConfigError(
                f"a link is named 'tier-tier' (device-edge, edge-cloud, ...), not {pair!r}"
            ) from None
    return out


def sharded_lm(
    hop: LMHop,
    model_name: str,
    *,
    spans: str | None = None,
    links: Mapping[frozenset[Tier], LinkProfile] | None = None,
) -> ShardedLM:
    """The entry point's driver of ``hop``'s LM across the tiers (its tokenizer and context length
    from the model's metadata; ``spans`` fixed, e.g. ``device=0-1,edge=2-4,cloud=5-5``)."""
    model = hop.runner.layered.model
    document = md.tokenizer(model)
    if document is None:
        raise ConfigError("the model carries no tokenizer: the API needs one to take text")
    return ShardedLM(
        hop,
        Tokenizer.from_json(document),
        model_name=model_name,
        max_seq_len=md.max_seq_len(model),
        fixed_spans=parse_spans(spans, hop.runner.num_layers) if spans else None,
        links=links,
    )


def early_exit(config: NodeConfig) -> EarlyExitLM | None:
    """The device's early-exit LM: a package's phone target, or an ONNX file (an LM, checked)."""
    if not config.lite_model:
        return None
    target = "phone" if config.lite_model.endswith(".tfm") else None
    data, _ = load_node_model(config.lite_model, Tier.DEVICE.value, target)
    options = SessionOptions(intra_op_threads=config.threads)
    try:
        return EarlyExitLM.open(data, options, slowdown=config.slowdown)
    except InvalidModelError as exc:
        raise ConfigError(f"--lite-model {config.lite_model}: not a language model ({exc})") from None


def entry_point(
    config: NodeConfig, hop: LMHop, label: str, images: TieredImages | None = None,
    detectors: TieredDetectors | None = None,
) -> APIState:
    """The API state of a device node serving ``hop``'s LM with the store ``config.store``;
    ``images``: its image generation across the tiers, kept only when it has somewhere to run;
    ``detectors``: its crack inspection across the tiers."""
    assert config.store is not None
    name = label.rsplit("/", 1)[-1].removesuffix(".onnx")
    lm = sharded_lm(hop, name, spans=config.spans, links=link_estimates(config.links))
    store = open_store(config.store)
    if images is not None and images.local is None and images.peers is None:
        images = None
    routing = RoutingConfig.load(config.routing) if config.routing else RoutingConfig()
    router = EntryRouter(matrix=routing.matrix(), rules=routing.rules, policy=routing.energy_policy)
    conversations = Conversations(
        lm, store, default_expires_in=config.expires_in, router=router, early_exit=early_exit(config)
    )
    routed = RoutedImages(images, conversations.router, lm) if images is not None else None
    control = None
    if config.deployment_url:
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            raise ConfigError(f"--deployment-url needs the deployment's token in ${TOKEN_ENV}")
        control = DeploymentClient(config.deployment_url, token)
    image_name = Path(config.image_model or "images").name.removesuffix(".tfm").removesuffix(".onnx")
    return APIState(
        conversations, store, images=images, routed_images=routed, deployment=control, detectors=detectors,
        image_contexts=ImageContexts(store, image_name) if routed is not None else None,
    )
