"""``tierflow.Client`` against an in-process fake of the API: parsing, errors, settings, bodies."""

from __future__ import annotations

import httpx
import pytest

import tierflow
from tests.client.fake_api import KEY, TOKENS, FakeAPI
from tierflow.client import ContextInfo, DoneEvent, TokenEvent
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


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def client(api: FakeAPI) -> tierflow.Client:
    return tierflow.Client(URL, KEY, transport=api.transport())


def test_generate_parses_the_documented_response(client: tierflow.Client) -> None:
    result = client.generate("The for statement")
    assert result.text == "".join(t for t, _ in TOKENS)
    assert (result.context_id, result.expires_in, result.tokens) == ("ctx_abc123", 3600, len(TOKENS))
    route = result.route
    assert route.tiers == ["device", "edge", "cloud"]
    assert route.spans == {"device": "0-1", "edge": "2-4", "cloud": "5-5"}
    assert [(h.from_, h.to, h.seconds) for h in route.hops] == [("device", "edge", 0.012),
                                                                 ("edge", "cloud", 0.02)]
    assert route.compute_s["edge"] == 0.21
    assert (route.ttft_s, route.tokens_per_s, route.prompt_tokens, route.cached_tokens) == (0.05, 41.2, 5, 0)
    assert route.events[0]["event"] == "failover" and route.events[0]["lost"] == "cloud"
    # fields of a newer server are kept, not refused
    assert result.model_extra == {"model": "demo-lm"}
    assert route.model_extra == {"a_newer_field": {"kept": True}}
    assert result.model_dump(by_alias=True)["route"]["hops"][0]["from"] == "device"


def test_none_options_are_left_out_and_the_token_is_sent(api: FakeAPI, client: tierflow.Client) -> None:
    client.generate("hi")
    seen = api.seen[-1]
    assert (seen.method, seen.path) == ("POST", "/generate")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body == {"prompt": "hi", "max_tokens": 64, "stream": False}
    client.generate("hi", context_id="ctx_abc123", max_tokens=5, temperature=0, top_k=40, top_p=0.95,
                    repeat_penalty=1, seed=7, expires_in=60, sla={"prefer": "latency"})
    assert api.seen[-1].body == {"prompt": "hi", "context_id": "ctx_abc123", "max_tokens": 5,
                                 "temperature": 0, "top_k": 40, "top_p": 0.95, "repeat_penalty": 1,
                                 "seed": 7, "expires_in": 60, "sla": {"prefer": "latency"}, "stream": False}


def test_a_wrongly_typed_option_is_the_callers_mistake(client: tierflow.Client) -> None:
    with pytest.raises(InvalidInputError, match="max_tokens"):
        client.generate("hi", max_tokens="many")  # type: ignore[arg-type]


def test_stream_gives_tokens_then_the_result(api: FakeAPI, client: tierflow.Client) -> None:
    events = list(client.stream("The for statement", seed=3))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [(t.text, t.token) for t in tokens] == TOKENS  # UTF-8 and U+2028 survive the chunking
    assert isinstance(events[-1], DoneEvent) and len(events) == len(TOKENS) + 1
    assert events[-1].result.text == "".join(t for t, _ in TOKENS)
    assert events[-1].result.route.tiers == ["device", "edge", "cloud"]
    assert api.seen[-1].body == {"prompt": "The for statement", "max_tokens": 64, "seed": 3, "stream": True}
    assert api.seen[-1].headers["accept"] == "text/event-stream"


def test_stream_with_crlf_line_endings(api: FakeAPI, client: tierflow.Client) -> None:
    api.stream_eol = "\r\n"
    events = list(client.stream("x"))
    assert [e.text for e in events if isinstance(e, TokenEvent)] == [t for t, _ in TOKENS]


def test_an_error_event_raises_the_mapped_error_after_the_tokens(api: FakeAPI,
                                                                 client: tierflow.Client) -> None:
    api.stream_error = ("TierUnavailable", "the cloud is gone and no tier can take layers 5-5")
    got: list[str] = []
    with pytest.raises(TierUnavailableError, match="no tier can take layers 5-5"):
        for event in client.stream("x"):
            assert isinstance(event, TokenEvent)
            got.append(event.text)
    assert got == [TOKENS[0][0]]
    api.stream_error = ("ContextExpired", "context ctx_x has expired")
    with pytest.raises(ContextExpiredError, match="^context ctx_x has expired$"):
        list(client.stream("x"))


def test_a_stream_that_ends_without_its_result_is_an_error() -> None:
    body = b'event: token\ndata: {"text": "a", "token": 1}\n\n'
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    with tierflow.Client(URL, KEY, transport=transport) as client, pytest.raises(
        TierUnavailableError, match="ended before its result"
    ):
        list(client.stream("x"))


def test_a_server_that_answers_whole_still_streams_its_result() -> None:
    from tests.client.fake_api import result

    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=result()))
    with tierflow.Client(URL, KEY, transport=transport) as client:
        events = list(client.stream("x"))
    assert len(events) == 1 and isinstance(events[0], DoneEvent)


def test_contexts_migrate_models_health(api: FakeAPI, client: tierflow.Client) -> None:
    assert [(c.context_id, c.tokens) for c in client.contexts()] == [("ctx_abc123", 10), ("ctx_def456", 3)]
    info = client.context("ctx_abc123")
    assert isinstance(info, ContextInfo) and info.spans == {"device": "0-1", "edge": "2-5"}
    assert info.shards["edge"].layers == "2-5" and info.shards["edge"].bytes == 81920
    moved = client.migrate("ctx_abc123", "0-1", "edge")
    assert api.seen[-1].body == {"layers": "0-1", "to": "edge"}
    assert moved.spans == {"edge": "0-5"}
    assert (moved.moved.layers, moved.moved.from_, moved.moved.to, moved.moved.bytes) == ("0-1", "device",
                                                                                          "edge", 40960)
    client.delete_context("ctx_abc123")
    assert (api.seen[-1].method, api.seen[-1].path) == ("DELETE", "/contexts/ctx_abc123")
    assert client.models() == ["demo-lm"]
    assert client.health() is True


def test_a_context_id_is_one_path_segment(api: FakeAPI, client: tierflow.Client) -> None:
    with pytest.raises(ContextNotFoundError):
        client.context("../generate")
    assert api.seen[-1].raw_path == b"/contexts/..%2Fgenerate"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, AuthenticationError), (403, ContextForbiddenError), (404, ContextNotFoundError),
     (410, ContextExpiredError), (422, InvalidInputError), (503, TierUnavailableError),
     (400, UserError), (500, RecoverableError)],
)
def test_error_statuses_map_onto_the_error_tree(api: FakeAPI, client: tierflow.Client, status: int,
                                                kind: type[TierflowError]) -> None:
    api.error = (status, f"what went wrong ({status})")
    for call in (lambda: client.generate("x"), lambda: list(client.stream("x")), client.contexts,
                 lambda: client.context("ctx_abc123"), lambda: client.delete_context("ctx_abc123"),
                 lambda: client.migrate("ctx_abc123", "0-1", "edge"), client.models):
        with pytest.raises(kind) as caught:
            call()
        assert type(caught.value) is kind
        assert str(caught.value) == f"what went wrong ({status})"


def test_a_missing_or_wrong_key_is_an_authentication_error(api: FakeAPI,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERFLOW_API_KEY", raising=False)
    with tierflow.Client(URL, transport=api.transport()) as client:
        with pytest.raises(AuthenticationError, match="no API key"):
            client.generate("x")
        assert "authorization" not in api.seen[-1].headers
        assert client.health() is True  # /healthz stays open
    with tierflow.Client(URL, "wrong", transport=api.transport()) as client, pytest.raises(
        AuthenticationError
    ):
        client.contexts()


def test_a_non_json_error_still_gives_one_line() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>\n<b>Bad gateway</b>\n</html>"))
    with tierflow.Client(URL, KEY, transport=transport) as client, pytest.raises(RecoverableError) as caught:
        client.models()
    assert "\n" not in str(caught.value) and "HTTP 502" in str(caught.value)


def test_fastapis_own_validation_errors_are_joined_on_one_line() -> None:
    detail = [{"loc": ["body", "max_tokens"], "msg": "Input should be greater than 0", "type": "x"}]
    transport = httpx.MockTransport(lambda r: httpx.Response(422, json={"detail": detail}))
    with tierflow.Client(URL, KEY, transport=transport) as client, pytest.raises(
        InvalidInputError, match=r"^body\.max_tokens: Input should be greater than 0$"
    ):
        client.generate("x")


def test_an_unexpected_answer_is_recoverable() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, json={"nothing": "here"}))
    with tierflow.Client(URL, KEY, transport=transport) as client, pytest.raises(
        RecoverableError, match="unexpected answer"
    ):
        client.generate("x")


def test_a_connection_failure_names_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with tierflow.Client(URL, KEY, transport=httpx.MockTransport(refuse)) as client:
        for call in (lambda: client.generate("x"), lambda: list(client.stream("x")), client.contexts):
            with pytest.raises(TierUnavailableError, match=f"cannot reach .* at {URL}: .*refused"):
                call()
        assert client.health() is False


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    monkeypatch.delenv("TIERFLOW_URL", raising=False)
    monkeypatch.delenv("TIERFLOW_API_KEY", raising=False)
    with tierflow.Client(transport=httpx.MockTransport(record)) as client:
        assert client.base_url == "http://127.0.0.1:8700"
        client.models()
    assert str(seen[-1].url) == "http://127.0.0.1:8700/v1/models"
    assert "authorization" not in seen[-1].headers
    monkeypatch.setenv("TIERFLOW_URL", "http://edge.example:9000/")
    monkeypatch.setenv("TIERFLOW_API_KEY", "env_key")
    with tierflow.Client(transport=httpx.MockTransport(record)) as client:
        client.models()
    assert str(seen[-1].url) == "http://edge.example:9000/v1/models"
    assert seen[-1].headers["authorization"] == "Bearer env_key"
    with tierflow.Client("http://given:1", "given_key", transport=httpx.MockTransport(record)) as client:
        client.models()
    assert str(seen[-1].url) == "http://given:1/v1/models"
    assert seen[-1].headers["authorization"] == "Bearer given_key"


def test_leaving_a_stream_early_closes_it(client: tierflow.Client) -> None:
    stream = client.stream("x")
    first = next(stream)
    assert isinstance(first, TokenEvent)
    stream.close()
    assert client.generate("again").tokens == len(TOKENS)
    client.close()
