"""The deployment control of `tierflow up`: only its token opens it, and a bad change is a clear 422."""

from __future__ import annotations

import httpx

from tierflow.api.deployment_client import TOKEN_HEADER
from tierflow.node.deployment_control import DeploymentControl


def test_the_control_needs_its_token_and_says_when_the_deployment_is_not_up_yet() -> None:
    control = DeploymentControl()
    url = control.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/deployment").status_code == 401  # no token
        assert httpx.get(f"{url}/deployment", headers={TOKEN_HEADER: "guess"}).status_code == 401
        starting = httpx.get(f"{url}/deployment", headers={TOKEN_HEADER: control.token})
        assert starting.status_code == 503 and "still starting" in starting.json()["detail"]
        bad = httpx.post(f"{url}/deployment/tiers/moon/down", headers={TOKEN_HEADER: control.token})
        assert bad.status_code == 422 and "moon" in bad.json()["detail"]
    finally:
        control.stop()
