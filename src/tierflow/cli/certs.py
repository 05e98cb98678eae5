"""``tierflow certs``: a local CA and per-node certificates for the mutual-TLS data plane."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tierflow.cli._common import console
from tierflow.transport.certs import DEFAULT_DAYS, DEFAULT_NODES, init_pki, issue_node_cert
from tierflow.transport.tls import cert_fingerprint

certs_app = typer.Typer(
    help="Certificates for the mutual-TLS data plane between tiers.", no_args_is_help=True
)


@certs_app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Directory for ca.crt/ca.key and <node>.crt/<node>.key.")],
    nodes: str = typer.Option(",".join(DEFAULT_NODES), "--nodes", help="Comma-separated node names."),
    days: int = typer.Option(DEFAULT_DAYS, "--days", help="Validity in days."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing CA; certificates it signed stop being trusted."
    ),
) -> None:
    """Create a local CA and a key + certificate for each node (EC P-256, keys 0600)."""
    files = init_pki(directory, nodes.split(","), days=days, force=force)
    console.print(f"CA            {files.ca_cert}", highlight=False)
    for name, (cert, _key) in files.nodes.items():
        fp = cert_fingerprint(cert.read_bytes()).hex()[:16]
        console.print(f"{name:<13} {cert}  sha256:{fp}…", highlight=False)


@certs_app.command("issue")
def issue(
    directory: Annotated[Path, typer.Argument(help="Directory with the CA (from `tierflow certs init`).")],
    name: Annotated[str, typer.Argument(help="Node name (a DNS label).")],
    days: int = typer.Option(DEFAULT_DAYS, "--days", help="Validity in days."),
) -> None:
    """Add (or replace) one node's key and certificate, signed by the existing CA."""
    cert, _key = issue_node_cert(directory, name, days=days)
    fp = cert_fingerprint(cert.read_bytes()).hex()[:16]
    console.print(f"{name:<13} {cert}  sha256:{fp}…", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(certs_app, name="certs")
