"""``tierflow up``: edge and cloud nodes behind emulated links, on this machine, until Ctrl-C."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import typer

from tierflow.cli._common import err_console, spinner


def up(
    model: str = typer.Argument(..., help="Model every tier serves: .tfm, .onnx or a bundled name."),
    profile: str = typer.Option(
        "4g", "--profile", help="SIMULATED access link of the device (2g..datacenter)."
    ),
    certs: Path = typer.Option(
        Path("tierflow-pki"), "--certs", help="Certificates folder (made if missing)."
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads per node."),
    edge_slowdown: float = typer.Option(1.0, "--edge-slowdown", min=1.0, help="SIMULATED slower edge box."),
    duration: float = typer.Option(
        0.0, "--duration", min=0.0, help="Stop after this many seconds (0: Ctrl-C)."
    ),
) -> None:
    """Start a local edge + cloud deployment; print one JSON line with the addresses, then serve.

    The device is your own process: point `tierflow.load` at the cloud through the emulated link
    (TIERFLOW_CLOUD / TIERFLOW_CERTS, printed below), or run split requests to the edge.
    """
    from tierflow.node.deploy import deploy_local

    # SIGTERM (a service manager, a test) must also stop the node processes this one started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with spinner(f"starting edge and cloud nodes for {model}"):
        deployment = deploy_local(model, certs, profile, threads=threads, edge_slowdown=edge_slowdown)
    try:
        info = deployment.describe()
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        cloud_link = info["device_links"]["device->cloud"]  # type: ignore[index]
        err_console.print(
            f"[bold]ready[/]: device -> edge/cloud over a simulated {profile} link. Try:\n"
            f"  TIERFLOW_CLOUD={cloud_link} TIERFLOW_CERTS={certs} "
            "tierflow run MODEL.tfm --target cloud-proxy --prompt ...",
            highlight=False,
            soft_wrap=True,
        )
        threading.Event().wait(duration if duration > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        deployment.stop()


def register(app: typer.Typer) -> None:
    app.command("up")(up)
