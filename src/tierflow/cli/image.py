"""``tierflow image``: one image from a running deployment, made on the tier its SLA routes it to."""

from __future__ import annotations

from pathlib import Path

import typer

from tierflow.cli._common import err_console
from tierflow.cli.generate import make_client


def image(
    prompt: str = typer.Argument(..., help="What to paint."),
    out: Path = typer.Option(Path("tierflow-image.png"), "--out", "-o", help="Where to write the PNG."),
    size: int | None = typer.Option(
        None, "--size", help="The largest side wanted: 256, 512 (default), 1024 or 2048; with --context: "
        "the last picture's, or the next level for 'higher resolution'.",
    ),
    min_resolution: int | None = typer.Option(
        None, "--min-resolution", help="The smallest side accepted (default: --size)."
    ),
    max_latency: float | None = typer.Option(None, "--max-latency", help="Seconds the image may take."),
    offline_ok: bool = typer.Option(False, "--offline-ok", help="A degraded image beats none."),
    prefer: str | None = typer.Option(None, "--prefer", help="quality (default), latency or energy."),
    tier: str | None = typer.Option(None, "--tier", help="Pin it to device, edge or cloud."),
    seed: int | None = typer.Option(None, "--seed", help="Noise seed (the same seed, the same image)."),
    edit: Path | None = typer.Option(
        None, "--edit", help="A square PNG or JPEG to repaint under PROMPT instead of painting anew."
    ),
    mask: Path | None = typer.Option(
        None, "--mask", help="With --edit: where to repaint (transparent or white pixels; default: all)."
    ),
    strength: float | None = typer.Option(
        None, "--strength", min=0.01, max=1.0,
        help="With --edit: how far from the picture (default 1 with --mask, else 0.8).",
    ),
    context: str | None = typer.Option(
        None, "--context", help="A context id an earlier image printed: PROMPT changes that picture "
        "('make it blue', 'now at night', 'higher resolution').",
    ),
    url: str | None = typer.Option(None, "--url", help="The entry point (default: $TIERFLOW_URL)."),
    api_key: str | None = typer.Option(None, "--api-key", help="API key (default: $TIERFLOW_API_KEY)."),
) -> None:
    """Make an image on a running deployment (`tierflow up`) and write it as PNG; stderr says where it ran
    and the context id to pass with --context for a follow-up. With --edit, repaint a picture instead
    (inside --mask, or all of it from its noised self)."""
    if edit is None and (mask is not None or strength is not None):
        raise typer.BadParameter("--mask and --strength go with --edit")
    sla = {
        k: v
        for k, v in (("min_resolution", min_resolution), ("max_latency", max_latency), ("prefer", prefer))
        if v is not None
    }
    if offline_ok:
        sla["offline_ok"] = True
    with make_client(url, api_key) as client:
        if edit is not None:
            picture = _read(edit)
            shape = _read(mask) if mask is not None else None
            result = client.edit(picture, prompt, mask=shape, size=size, strength=strength, seed=seed,
                                 sla=sla or None, tier=tier, context_id=context)
        else:
            result = client.image(
                prompt, size=size, seed=seed, sla=sla or None, tier=tier, context_id=context
            )
    out.write_bytes(result.png)
    route = result.route
    made = f"{route.get('resolution')} px made on the {route.get('tier')} in {route.get('wall_s', 0):.2f} s"
    follow = route.get("follow_up")
    changed = f"; {follow['prompt']!r} ({', '.join(follow['changes']) or 'no change'})" if follow else ""
    err_console.print(
        f"{out}: {made}{' (degraded)' if route.get('degraded') else ''}{changed}; "
        f"{route.get('decision', {}).get('reason', '')}; context {result.context_id}",
        highlight=False,
        soft_wrap=True,
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}") from exc


def register(app: typer.Typer) -> None:
    app.command("image")(image)
