"""``tierflow.load``: open a unified model package on the right target, or through the cloud node."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tierflow.engine.cloud_proxy import CloudEndpoint, RemoteModel
from tierflow.model.package import Manifest
from tierflow.runtime import loader
from tierflow.runtime.capabilities import Capabilities
from tierflow.runtime.interfaces import LoadedModel


def load(
    path: str | Path,
    policy: loader.Policy | Mapping[str, Any] | str | Path | None = None,
    capabilities: Capabilities | None = None,
    target: str | None = None,
    threads: int = 0,
    cloud: CloudEndpoint | None = None,
) -> LoadedModel:
    """Load ``path`` on the target this machine should run (see :mod:`tierflow.runtime.loader`).

    The result is a ``TextModel``, ``ImageModel`` or ``GenericModel`` by the
    package's kind (``model.kind`` tells them apart; see :mod:`tierflow.runtime.interfaces`).
    When no local target fits, it is a cloud proxy with the same calls; it runs
    them on the cloud node at ``cloud`` (default: ``TIERFLOW_CLOUD`` / ``TIERFLOW_CERTS``),
    which must serve this package's ``cloud`` target.
    """
    endpoint = cloud or CloudEndpoint.from_env()

    def remote(manifest: Manifest) -> RemoteModel:
        assert endpoint is not None
        return RemoteModel(endpoint, manifest)

    return loader.load(path, policy, capabilities, target, threads, remote=remote if endpoint else None)
