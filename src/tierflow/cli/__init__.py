"""The ``tierflow`` command line.

Each command group lives in its own module and registers itself on the one
Typer app; :func:`main` turns tierflow errors into one-line messages.
"""

from __future__ import annotations

import importlib

import typer

from tierflow.cli._common import run_cli

app = typer.Typer(
    name="tierflow",
    help="Run one generative model across a device, an edge box and the cloud as one system.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per command group; each has `register(app)`.
COMMAND_MODULES = (
    "models", "run", "export", "demo", "certs", "compile", "inspect", "link", "node", "bench", "plan",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"tierflow.cli.{_name}").register(app)


def main() -> None:
    run_cli(app)
