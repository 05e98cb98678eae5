"""``tierflow.AsyncClient`` against the same in-process fake: the same calls, awaited."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import httpx
import pytest

import tierflow
from tests.client.fake_api import KEY, TOKENS, FakeAPI
from tierflow.client import DoneEvent, StreamEvent, TokenEvent
from tierflow.errors import (
    AuthenticationError,
    ContextExpiredError,
    ContextForbiddenError,
    ContextNotFoundError,
    InvalidInputError,
    RecoverableError,
    TierflowError,
    TierUnavailableError,
    UserError,
)

URL = "http://tierflow.test:8700"


def test_generate_and_stream() -> None:
    api = FakeAPI()

    async def scenario() -> None:
        async with tierflow.AsyncClient(URL, KEY, transport=api.transport()) as client:
            result = await client.generate("hi", temperature=0.5)
            assert result.context_id == "ctx_abc123" and result.route.hops[0].from_ == "device"
            assert api.seen[-1].body == {"prompt": "hi", "max_tokens": 64, "temperature": 0.5,
                                         "stream": False}
            assert api.seen[-1].headers["authorization"] == f"Bearer {KEY}"
            events: list[StreamEvent] = [e async for e in client.stream("hi", context_id="ctx_abc123")]
            assert [(e.text, e.token) for e in events if isinstance(e, TokenEvent)] == TOKENS
            assert isinstance(events[-1], DoneEvent) and events[-1].result.tokens == len(TOKENS)
            assert api.seen[-1].body == {"prompt": "hi", "context_id": "ctx_abc123", "max_tokens": 64,
                                         "stream": True}
            async with aclosing(client.stream("early")) as stream:
                async for event in stream:
                    assert isinstance(event, TokenEvent)
                    break

    asyncio.run(scenario())


def test_contexts_migrate_models_health() -> None:
    api = FakeAPI()

    async def scenario() -> None:
        async with tierflow.AsyncClient(URL, KEY, transport=api.transport()) as client:
            assert [c.context_id for c in await client.contexts()] == ["ctx_abc123", "ctx_def456"]
            assert (await client.context("ctx_abc123")).shards["device"].tokens == 10
            assert (await client.migrate("ctx_abc123", "0-1", "edge")).moved.to == "edge"
            await client.delete_context("ctx_abc123")
            assert await client.models() == ["demo-lm"]
            assert await client.health() is True

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, AuthenticationError), (403, ContextForbiddenError), (404, ContextNotFoundError),
     (410, ContextExpiredError), (422, InvalidInputError), (503, TierUnavailableError),
     (400, UserError), (500, RecoverableError)],
)
def test_error_statuses_map_onto_the_error_tree(status: int, kind: type[TierflowError]) -> None:
    api = FakeAPI(error=(status, f"detail {status}"))

    async def scenario() -> None:
        async with tierflow.AsyncClient(URL, KEY, transport=api.transport()) as client:
            with pytest.raises(kind, match=f"^detail {status}$") as caught:
                await client.generate("x")
            assert type(caught.value) is kind
            with pytest.raises(kind, match=f"^detail {status}$"):
                [e async for e in client.stream("x")]
            with pytest.raises(kind):
                await client.contexts()

    asyncio.run(scenario())


def test_an_error_event_in_a_stream() -> None:
    api = FakeAPI(stream_error=("Forbidden", "context ctx_abc123 belongs to another identity"))

    async def scenario() -> None:
        async with tierflow.AsyncClient(URL, KEY, transport=api.transport()) as client:
            with pytest.raises(ContextForbiddenError, match="another identity"):
                [e async for e in client.stream("x")]

    asyncio.run(scenario())


def test_a_connection_failure_and_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERFLOW_URL", "http://down.example:8700")
    monkeypatch.setenv("TIERFLOW_API_KEY", KEY)

    def refuse(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        raise httpx.ConnectError("Connection refused", request=request)

    async def scenario() -> None:
        async with tierflow.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
            with pytest.raises(TierUnavailableError, match="http://down.example:8700"):
                await client.generate("x")
            with pytest.raises(TierUnavailableError, match="http://down.example:8700"):
                [e async for e in client.stream("x")]
            assert await client.health() is False

    asyncio.run(scenario())
