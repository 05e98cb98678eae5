"""Control of a local deployment over HTTP: its links' profiles and its tiers' processes.

``tierflow up`` runs this on a loopback port of its own process, where the link emulators and the
node processes live, and tells the device node where it is (``--deployment-url``; the shared token
travels in the environment, never on a command line). The device node's public API proxies
``/deployment/...`` here for the dashboard and ``tierflow link set``, behind the API key.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel, ConfigDict, Field

from tierflow.api import errors
from tierflow.api.deployment_client import TOKEN_ENV, TOKEN_HEADER
from tierflow.errors import AuthenticationError, InvalidInputError, TierUnavailableError
from tierflow.node.deploy import LocalDeployment
from tierflow.types.tiers import Tier

__all__ = ["TOKEN_ENV", "DeploymentControl"]


class LinkChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str = Field(max_length=60, examples=["3g"])


class DeploymentControl:
    """The HTTP control of ``deployment`` (set once it has started: until then every call is a 503)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.deployment: LocalDeployment | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one change at a time: a restart takes seconds
        self.url: str | None = None

    def _deployment(self) -> LocalDeployment:
        if self.deployment is None:
            raise TierUnavailableError("the deployment is still starting")
        return self.deployment

    def app(self) -> FastAPI:
        app = FastAPI(title="tierflow deployment control", docs_url=None, redoc_url=None)
        errors.install(app)

        def check(token: str = Header("", alias=TOKEN_HEADER)) -> None:
            if not secrets.compare_digest(token, self.token):
                raise AuthenticationError("bad deployment token")

        @app.get("/deployment", dependencies=[Depends(check)])
        def snapshot() -> dict[str, Any]:
            return self._deployment().snapshot()

        @app.put("/deployment/links/{name}", dependencies=[Depends(check)])
        def set_link(name: str, body: LinkChange) -> dict[str, Any]:
            with self._lock:
                self._deployment().set_link(name, body.profile)
            return self._deployment().snapshot()

        @app.post("/deployment/tiers/{tier}/{action}", dependencies=[Depends(check)])
        def switch(tier: str, action: str) -> dict[str, Any]:
            try:
                which = Tier(tier)
            except ValueError:
                raise InvalidInputError(f"unknown tier {tier!r} (edge, cloud)") from None
            with self._lock:
                if action == "down":
                    self._deployment().tier_down(which)
                elif action == "up":
                    self._deployment().tier_up(which)
                else:
                    raise InvalidInputError(f"unknown action {action!r} (down, up)")
            return self._deployment().snapshot()

        return app

    def start(self, host: str = "127.0.0.1") -> str:
        """Serve on a free loopback port in a thread; returns the base URL."""
        config = uvicorn.Config(self.app(), host=host, port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="deployment-control", daemon=True)
        self._thread.start()
        while not self._server.started:  # uvicorn binds in its own thread; wait for the socket
            if not self._thread.is_alive():
                raise TierUnavailableError("the deployment control server did not start")
            self._thread.join(0.05)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
