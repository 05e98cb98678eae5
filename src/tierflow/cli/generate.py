"""``tierflow generate``: one request to a deployment's public API, streamed as it is generated.

It is the SDK (:class:`tierflow.Client`) on the command line: the text goes to stdout token by
token, the conversation's id and the route it took to stderr, so ``--context`` continues it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from tierflow.cli._common import err_console
from tierflow.client import Client, GenerateResult, Route, TokenEvent
from tierflow.errors import AuthenticationError, InvalidInputError


def make_client(url: str | None, api_key: str | None) -> Client:
    """The client the command uses (tests replace it to inject a transport)."""
    return Client(url, api_key)


def generate(
    prompt: str = typer.Argument(..., help="The prompt (appended to the conversation with --context)."),
    context: str | None = typer.Option(
        None, "--context", help="Continue this conversation: the context id an earlier call printed."
    ),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", help="New tokens to generate."),
    temperature: float | None = typer.Option(
        None, "--temperature", "-t", help="Sampling temperature (default: the server's; 0 = greedy)."
    ),
    greedy: bool = typer.Option(
        False, "--greedy", help="Deterministic: always the most likely token, no repetition penalty."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling."),
    url: str | None = typer.Option(
        None,
        "--url",
        help="The deployment's entry point (default: $TIERFLOW_URL, else http://127.0.0.1:8700).",
    ),
    api_key: str | None = typer.Option(None, "--api-key", help="API key (default: $TIERFLOW_API_KEY)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON, not streamed."),
) -> None:
    """Generate text after PROMPT on a running deployment (`tierflow up`), streaming it to stdout."""
    repeat_penalty: float | None = None
    if greedy:
        if temperature not in (None, 0):
            raise InvalidInputError("--greedy means temperature 0; drop one of them")
        temperature, repeat_penalty = 0.0, 1.0
    options: dict[str, Any] = {
        "context_id": context,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "repeat_penalty": repeat_penalty,
        "seed": seed,
    }
    try:
        with make_client(url, api_key) as client:
            if as_json:
                result = client.generate(prompt, **options)
                typer.echo(result.model_dump_json(by_alias=True, indent=2))
                return
            result = _stream(client, prompt, options)
    except AuthenticationError as exc:
        if api_key or os.environ.get("TIERFLOW_API_KEY"):
            raise
        raise AuthenticationError(f"{exc} (no API key: pass --api-key or set TIERFLOW_API_KEY)") from exc
    _say(
        f"context: {result.context_id}  (expires in {result.expires_in:g} s; "
        f"continue with --context {result.context_id})"
    )
    _say(route_summary(result))


def _stream(client: Client, prompt: str, options: dict[str, Any]) -> GenerateResult:
    """Write each token to stdout as it comes; the final result. A line is always ended."""
    written: list[str] = []
    try:
        for event in client.stream(prompt, **options):
            if isinstance(event, TokenEvent):
                _write(event.text, written)
                continue
            if not written:  # a server that answered whole, without tokens
                _write(event.result.text, written)
            return event.result
        raise AssertionError("the SDK's stream ends with its result")  # pragma: no cover
    finally:
        if written and not written[-1].endswith("\n"):
            _write("\n", written)


def _write(text: str, written: list[str]) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()
        written.append(text)


def route_summary(result: GenerateResult) -> str:
    """One line: which tier ran which layers in how long, speed, prompt reuse, route events."""
    route = result.route
    parts = [_tiers(route)]
    speed = f"{result.tokens} tokens"
    if route.tokens_per_s is not None:
        speed += f", {route.tokens_per_s:.1f} tokens/s"
    if route.ttft_s is not None:
        speed += f", first token {route.ttft_s:.3f} s"
    parts.append(speed)
    parts.append(f"prompt {route.prompt_tokens} tokens, {route.cached_tokens} cached")
    if route.events:
        parts.append("events: " + ", ".join(_event(e) for e in route.events))
    return "route: " + "; ".join(parts)


def _tiers(route: Route) -> str:
    tiers = list(route.tiers) + [t for t in route.spans if t not in route.tiers]
    if not tiers:
        return "(not reported)"
    shown = []
    for tier in tiers:
        text = tier
        if tier in route.spans:
            text += f"[{route.spans[tier]}]"
        if tier in route.compute_s:
            text += f" {route.compute_s[tier]:.3f} s"
        shown.append(text)
    return " -> ".join(shown)


def _event(event: dict[str, Any]) -> str:
    name = str(event.get("event", "event"))
    details = [f"{k}={v}" for k, v in event.items() if k != "event" and isinstance(v, str | int | float)]
    return f"{name} ({' '.join(details)})" if details else name


def _say(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
