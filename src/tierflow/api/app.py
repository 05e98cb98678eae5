"""Putting the public API on an app: its routes, its error handlers, and the state they read."""

from __future__ import annotations

from fastapi import FastAPI

from tierflow.api import dashboard_routes, errors, image_routes, inspection_routes, openai_routes, routes
from tierflow.api.routes import APIState


def mount(app: FastAPI, state: APIState) -> FastAPI:
    """Serve the public API (docs/API.md) on ``app`` (the device node's control plane app)."""
    app.state.tierflow = state
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(openai_routes.router)
    app.include_router(image_routes.router)
    app.include_router(inspection_routes.router)
    app.include_router(dashboard_routes.router)
    return app


def create_api(state: APIState, title: str = "tierflow") -> FastAPI:
    """A stand-alone app with only the public API (tests, embedding in another server)."""
    return mount(FastAPI(title=title, version="0.1.0"), state)
