"""``tierflow token``: issue an API key for a deployment's context store."""

from __future__ import annotations

import json
import sys

import typer

from tierflow.cli.up import default_store


def token(
    store: str = typer.Option(
        None,
        "--store",
        help="The deployment's context store: a SQLite file or a redis:// url "
        "(default: the one `tierflow up` uses).",
    ),
    identity: str | None = typer.Option(
        None, "--identity", help="Whose key (contexts belong to an identity); default: a new identity."
    ),
) -> None:
    """Print one JSON line with a new key: {"identity", "api_key"}. The key is shown only this once."""
    from tierflow.context.auth import issue_key
    from tierflow.context.factory import open_store

    opened = open_store(store or str(default_store()))
    try:
        issued = issue_key(opened, identity)
    finally:
        opened.close()
    sys.stdout.write(json.dumps({"identity": issued.identity, "api_key": issued.key}) + "\n")


def register(app: typer.Typer) -> None:
    app.command("token")(token)
