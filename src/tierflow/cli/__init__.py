"""The ``tierflow`` command line.

Each command group lives in its own module and registers itself on the one
Typer app; :func:`main` turns tierflow errors into one-line messages.
"""

from __future__ import annotations

import importlib
import os

# gRPC's C core logs bind failures and the like to stderr itself; the CLI reports them as one line.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import typer  # noqa: E402

from tierflow.cli._common import run_cli  # noqa: E402

app = typer.Typer(
    name="tierflow",
    help="Run one generative model across a device, an edge box and the cloud as one system.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per command group; each has `register(app)`.
COMMAND_MODULES = (
    "models",
    "run",
    "export",
    "demo",
    "certs",
    "compile",
    "inspect",
    "link",
    "node",
    "up",
    "bench",
    "plan",
    "generate",
    "image",
    "token",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"tierflow.cli.{_name}").register(app)


def main() -> None:
    run_cli(app)
