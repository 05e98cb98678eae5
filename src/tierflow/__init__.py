"""tierflow: one generative model across device, edge and cloud.

Importing tierflow has no side effects (and loads no gRPC); the public names are below.
:func:`load` returns a :class:`TextModel`, :class:`ImageModel` or :class:`GenericModel`
by the package's kind -- ``model.kind`` (a :class:`ModelKind`) tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.client import AsyncClient, Client
from tierflow.errors import RecoverableError, TierflowError, UserError
from tierflow.runtime.image import ImageResult
from tierflow.runtime.interfaces import GenericModel, ImageModel, LoadedModel, TextModel
from tierflow.runtime.lm import CausalLM, GenerationResult, SamplingConfig
from tierflow.types import ModelKind, Tier

if TYPE_CHECKING:
    from tierflow.engine.cloud_proxy import CloudEndpoint
    from tierflow.runtime.capabilities import Capabilities
    from tierflow.runtime.loader import Policy

__version__ = package_version("tierflow")

__all__ = [
    "AsyncClient",
    "CausalLM",
    "Client",
    "GenerationResult",
    "GenericModel",
    "ImageModel",
    "ImageResult",
    "LoadedModel",
    "ModelKind",
    "RecoverableError",
    "SamplingConfig",
    "TextModel",
    "Tier",
    "TierflowError",
    "UserError",
    "__version__",
    "load",
]


def load(
    path: str | Path,
    policy: Policy | Mapping[str, Any] | str | Path | None = None,
    capabilities: Capabilities | None = None,
    target: str | None = None,
    threads: int = 0,
    cloud: CloudEndpoint | None = None,
) -> LoadedModel:
    """Open the ``.tfm`` package at ``path`` on the target this machine should run.

    A :class:`TextModel`, :class:`ImageModel` or :class:`GenericModel` by the package's kind;
    when no local target fits, a cloud proxy with the same calls that runs them on the cloud
    node at ``cloud`` (default: ``TIERFLOW_CLOUD`` / ``TIERFLOW_CERTS``). See
    :func:`tierflow.engine.load.load`.
    """
    # the cloud proxy's transport is the data plane (gRPC): imported on the first load only
    from tierflow.engine.load import load as load_package

    return load_package(path, policy, capabilities, target, threads, cloud)
