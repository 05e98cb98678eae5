"""The entry point's way to the local deployment's control (``tierflow up``: links and tier processes)."""

from __future__ import annotations

from typing import Any

import httpx

from tierflow.errors import InvalidInputError, TierUnavailableError

TOKEN_HEADER = "X-Deployment-Token"  # what tierflow.node.deployment_control checks
TOKEN_ENV = "TIERFLOW_DEPLOYMENT_TOKEN"  # how tierflow up hands the token to the device node


class DeploymentClient:
    """The entry point's way to the local deployment's control (``tierflow up``)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=120.0) as http:
                answer = await http.request(method, path, json=body, headers={TOKEN_HEADER: self.token})
        except httpx.HTTPError as exc:
            why = type(exc).__name__
            raise TierUnavailableError(f"the deployment's control does not answer: {why}") from exc
        try:
            data: dict[str, Any] = answer.json()
        except ValueError:
            raise TierUnavailableError(f"the control answered {answer.status_code}, not JSON") from None
        if answer.status_code == 422:
            raise InvalidInputError(str(data.get("detail", "rejected")))
        if not answer.is_success:
            said = f"{answer.status_code}: {data.get('detail')}"
            raise TierUnavailableError(f"the deployment's control said {said}")
        return data
